"""Where a change shows: a per-pixel visibility budget from the clean crop (docs/design.md, "Where the
perturbation goes").

A just-noticeable-difference (JND) model of the kind image coders use: the eye misses a change of
a few grey levels on a dark or a bright background (luminance adaptation, Chou & Li 1995) and a far
larger one inside texture or at an edge (contrast masking); the two combine as in Yang et al.'s
NAMM (2005): LA + TM - 0.3 min(LA, TM). The budget is that threshold relative to the face's own
textured pixels, so smooth skin gets a small share of epsilon and hair, brows, lashes and edges
the whole of it. It multiplies the face mask, so it scales G's output, the refinement's steps and
their L-inf bound alike.
"""

from __future__ import annotations

import kornia
import torch


def grey_levels(image: torch.Tensor) -> torch.Tensor:
    """Luma (BT.601) in grey levels 0-255. B x 3 x H x W in [0, 1] -> B x 1 x H x W."""
    return 255 * kornia.color.rgb_to_grayscale(image)


def luminance_adaptation(grey: torch.Tensor) -> torch.Tensor:
    """Chou & Li's visibility threshold of the background luminance (grey levels): about 20 on black,
    3 at mid-grey, rising slowly towards white. B x 1 x H x W -> same."""
    dark = 17 * (1 - (grey / 127).clamp_min(0).sqrt()) + 3
    bright = 3 / 128 * (grey - 127) + 3
    return torch.where(grey <= 127, dark, bright)


def local_std(grey: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Standard deviation over a ``window`` x ``window`` box around each pixel (texture and edges).
    B x 1 x H x W -> same."""
    mean = kornia.filters.box_blur(grey, (window, window), border_type="reflect")
    square = kornia.filters.box_blur(grey * grey, (window, window), border_type="reflect")
    return (square - mean * mean).clamp_min(0).sqrt()


def jnd_map(image: torch.Tensor, window: int = 7, texture_gain: float = 1.0) -> torch.Tensor:
    """The just-noticeable change at each pixel, in grey levels: luminance adaptation and
    ``texture_gain`` times the local standard deviation, combined by NAMM (their overlap counted once).
    B x 3 x H x W in [0, 1] -> B x 1 x H x W."""
    grey = grey_levels(image)
    la, tm = luminance_adaptation(grey), texture_gain * local_std(grey, window)
    return la + tm - 0.3 * torch.minimum(la, tm)


def visibility_budget(image: torch.Tensor, mask: torch.Tensor, window: int = 7, texture_gain: float = 1.0,
                      reference: float = 0.8, floor: float = 0.2) -> torch.Tensor:
    """Share of the budget each pixel may use: its JND over the JND at the ``reference`` quantile of
    the pixels inside ``mask`` (> 0.5), clipped to [``floor``, 1]: the most textured pixels of the
    face get all of epsilon, smooth skin a share as small as ``floor``.
    image: B x 3 x H x W in [0, 1]; mask: B x 1 x H x W -> B x 1 x H x W in [floor, 1]."""
    jnd = jnd_map(image, window, texture_gain)
    inside = mask > 0.5
    refs = torch.stack([j[m].quantile(reference) if m.any() else j.quantile(reference)
                        for j, m in zip(jnd, inside)])
    return (jnd / refs.clamp_min(1e-6).view(-1, 1, 1, 1)).clamp(floor, 1.0)


def texture_ratio(clean: torch.Tensor, protected: torch.Tensor, mask: torch.Tensor, smooth_share: float = 0.4,
                  window: int = 7) -> torch.Tensor:
    """Mean |change| on the ``smooth_share`` smoothest face pixels (lowest local variance of the clean
    image, ``window`` px) over the mean on the other face pixels: under 1, the change hides in texture.
    clean, protected: B x 3 x H x W; mask: B x 1 x H x W (face pixels: > 0.5) -> B (nan: no change)."""
    variance = local_std(grey_levels(clean), window).flatten(1)
    change = (protected - clean).abs().mean(1).flatten(1)
    ratios = []
    for v, c, m in zip(variance, change, mask.flatten(1) > 0.5):
        v, c = v[m], c[m]
        smooth = v <= v.quantile(smooth_share)
        rest = c[~smooth].mean()
        ratios.append(c[smooth].mean() / rest if rest > 0 else torch.tensor(float("nan")))
    return torch.stack(ratios)
