"""Resilient-perturbation module RP (paper V-C-7, Eq. 19; docs/design.md, "RP").

A small encoder-decoder trained in its own stage to undo degradations a protected photo meets
(Gaussian noise, JPEG, blur) and adversarial-looking sign noise within the budget. Frozen while
LD-MAN trains; ``blend_through_rp`` mixes x^A toward RP(x^A) with a random intensity s in [0, 1].
"""

from __future__ import annotations

import kornia
import torch
from torch import nn

from invisible_face.metrics import psnr


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


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random size x size crop per image. B x C x H x W -> B x C x size x size."""
    h, w = images.shape[-2:]
    tops = torch.randint(0, h - size + 1, (len(images),), generator=generator).tolist()
    lefts = torch.randint(0, w - size + 1, (len(images),), generator=generator).tolist()
    return torch.stack([im[:, t:t + size, l:l + size] for im, t, l in zip(images, tops, lefts)])


def train_denoiser(train: torch.Tensor, val: torch.Tensor, cfg: dict, epsilon: float, seed: int,
                   on_epoch=None) -> tuple[Denoiser, list[dict[str, float]]]:
    """Fit RP on (degrade(x) -> x) with an L1 loss on random crops of ``cfg['crop']`` px.

    train, val: N x 3 x H x W float in [0, 1]. ``on_epoch(metrics)`` is called after each epoch.
    Returns the model (eval mode) and per-epoch metrics, including the held-out PSNR gain: PSNR of
    RP(degraded) minus PSNR of the degraded input, against the clean chips.
    """
    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    model = Denoiser(cfg["width"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    val_degraded = degrade(val, epsilon, torch.Generator().manual_seed(seed + 1))
    history = []
    for epoch in range(1, cfg["epochs"] + 1):
        order = torch.randperm(len(train), generator=g)
        losses = []
        for start in tqdm(range(0, len(train), cfg["batch_size"]), desc=f"RP epoch {epoch}", leave=False):
            clean = random_crops(train[order[start:start + cfg["batch_size"]]], cfg["crop"], g)
            loss = (model(degrade(clean, epsilon, g)) - clean).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            restored = torch.cat([model(val_degraded[i:i + 64]) for i in range(0, len(val), 64)])
        model.train()
        before, after = psnr(val, val_degraded), psnr(val, restored)
        metrics = {"epoch": epoch, "train_l1": sum(losses) / len(losses),
                   "val_psnr_degraded": before.mean().item(), "val_psnr_restored": after.mean().item(),
                   "val_psnr_gain": (after - before).mean().item()}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return model.eval(), history
