"""LD-MAN's networks and the perturbation it applies (paper V-C, Fig. 2, Eq. 6-7).

x^M = A * x (Eq. 1), eps_l = G(x^M) + beta * eps_d (Eq. 6), x^A = clip(x + A * clip(eps_l, -eps, eps), 0, 1)
(Eq. 7 with DESIGN.md decision 3's budget). G and D are fully convolutional, so the same G runs
on a face crop at its own resolution at serving time (DESIGN.md decision 4).

The perturbation lives only inside the region, so G works on a window around the region
(``region_window``) rather than on the whole image: at training time a fixed-size window makes
batches, at serving time the window is the region's bounding box at the crop's own resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 1),
                         nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(ch, ch), nn.Conv2d(ch, ch, 3, padding=1), nn.InstanceNorm2d(ch, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """G: (x^M, A) -> perturbation in [-epsilon, epsilon].

    forward(masked: B x 3 x H x W, mask: B x 1 x H x W) -> B x 3 x H x W. Any H, W (padded to a
    multiple of 4 inside). Encoder-decoder: two stride-2 stages, residual blocks, upsampling.
    """

    def __init__(self, epsilon: float, width: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.encode = nn.Sequential(_conv(4, width // 2), _conv(width // 2, width, 4, 2), _conv(width, 2 * width, 4, 2))
        self.middle = nn.Sequential(*[_Residual(2 * width) for _ in range(blocks)])
        self.decode = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(2 * width, width),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(width, width // 2),
            nn.Conv2d(width // 2, 3, 3, padding=1),
        )

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = masked.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        x = F.pad(torch.cat([masked, mask], 1), (0, pw, 0, ph), mode="replicate")
        out = self.decode(self.middle(self.encode(x)))[..., :h, :w]
        return self.epsilon * torch.tanh(out)


class Discriminator(nn.Module):
    """D: PatchGAN logits telling clean windows from protected ones. B x 3 x H x W -> B x 1 x h x w."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.InstanceNorm2d(2 * width, affine=True), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.InstanceNorm2d(4 * width, affine=True), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * width, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def local_perturbation(generator: Generator, window: torch.Tensor, mask: torch.Tensor,
                       eps_d: torch.Tensor | None, beta: float, epsilon: float) -> torch.Tensor:
    """eps_l restricted to the region and the budget (Eq. 6 + decision 3).

    window: B x 3 x H x W in [0, 1]; mask: B x 1 x H x W in {0, 1}; eps_d: B x 3 x H x W signs or
    None (the "without DP" ablation) -> B x 3 x H x W with |eps_l| <= epsilon, zero outside the mask.
    """
    eps_l = generator(window * mask, mask)
    if eps_d is not None:
        eps_l = eps_l + beta * eps_d
    return eps_l.clamp(-epsilon, epsilon) * mask


def apply_perturbation(image: torch.Tensor, eps_l: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with the valid pixel range: x^A = clip(x + eps_l, 0, 1). Same shapes in and out."""
    return (image + eps_l).clamp(0, 1)


def region_window(rect: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Top-left corners of ``size`` x ``size`` windows centred on each region, inside the image.

    rect: B x 4 (x0, y0, x1, y1) -> B x 2 long (left, top).
    """
    cx, cy = (rect[:, 0] + rect[:, 2]) / 2, (rect[:, 1] + rect[:, 3]) / 2
    left = (cx - size / 2).round().clamp(0, width - size)
    top = (cy - size / 2).round().clamp(0, height - size)
    return torch.stack([left, top], 1).long()


def crop_windows(images: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """B x C x H x W, B x 2 (left, top) -> B x C x size x size."""
    return torch.stack([img[:, t:t + size, l:l + size] for img, (l, t) in zip(images, corners.tolist())])


def paste_windows(images: torch.Tensor, windows: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Differentiable inverse of :func:`crop_windows`: images with the windows added in place.

    images: B x C x H x W; windows: B x C x s x s (added, e.g. a perturbation) -> B x C x H x W.
    """
    h, w = images.shape[-2:]
    s = windows.shape[-1]
    padded = [F.pad(win, (l, w - l - s, t, h - t - s)) for win, (l, t) in zip(windows, corners.tolist())]
    return images + torch.stack(padded)
