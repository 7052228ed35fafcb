"""Resilient-perturbation module RP (paper V-C-7, Eq. 19; DESIGN.md decision 7).

A small encoder-decoder trained in its own stage to undo degradations a protected photo meets
(Gaussian noise, JPEG, blur) and adversarial-looking sign noise within the budget. Frozen while
LD-MAN trains; ``blend_through_rp`` mixes x^A toward RP(x^A) with a random intensity s in [0, 1].
"""

from __future__ import annotations

import kornia
import torch
from torch import nn


class Denoiser(nn.Module):
    """RP: residual encoder-decoder, B x 3 x H x W in [0, 1] -> same (H, W multiples of 2)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(inplace=True))
        self.mid = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU(inplace=True))
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(width, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.up(self.mid(self.down(x)))).clamp(0, 1)


def degrade(x: torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random degradation per image: Gaussian noise, JPEG (quality 30-90), Gaussian blur, or
    random sign noise of magnitude ``epsilon``. B x 3 x H x W in [0, 1] -> same."""
    b = x.shape[0]
    kind = torch.randint(0, 4, (b,), generator=generator)
    u = torch.rand(b, generator=generator)
    out = x.clone()
    noise = (kind == 0)
    if noise.any():
        sigma = (0.01 + 0.04 * u[noise]).view(-1, 1, 1, 1).to(x)
        out[noise] = x[noise] + sigma * torch.randn(x[noise].shape, generator=generator).to(x)
    jpeg = (kind == 1)
    if jpeg.any():
        quality = (30 + 60 * u[jpeg]).to(x)
        out[jpeg] = kornia.enhance.jpeg_codec_differentiable(x[jpeg], quality)
    blur = (kind == 2)
    if blur.any():
        s = float(0.5 + u[blur].mean())
        out[blur] = kornia.filters.gaussian_blur2d(x[blur], (5, 5), (s, s))
    signs = (kind == 3)
    if signs.any():
        sign = torch.randint(0, 2, x[signs].shape, generator=generator).to(x) * 2 - 1
        out[signs] = x[signs] + epsilon * sign
    return out.clamp(0, 1)


def blend_through_rp(rp: nn.Module, x_adv: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 19's input: (1 - s) x^A + s RP(x^A), s ~ U[0, 1] per image. B x 3 x H x W -> same."""
    s = torch.rand(x_adv.shape[0], 1, 1, 1, generator=generator).to(x_adv)
    return (1 - s) * x_adv + s * rp(x_adv)
