"""What platforms do to uploads, as image ops (docs/design.md, "Surviving recompression").

Real codecs through Pillow (the codec the protector's output is written with), for the stop rule
and the evaluation; a differentiable JPEG (kornia) and a random recompression (JPEG at a random
quality, a downscale and back, a slight blur) for gradients: G trains on it (expectation over
transformations) and the refinement steps through the JPEG at the quality it must survive.
Every op maps B x 3 x H x W in [0, 1] to the same shape.
"""

from __future__ import annotations

import io
from typing import Callable

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from invisible_face.data.images import to_tensor, to_uint8


def _codec_round_trip(x: torch.Tensor, fmt: str, quality: int) -> torch.Tensor:
    out = []
    for img in to_uint8(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt, quality=quality)
        buf.seek(0)
        out.append(to_tensor(np.asarray(Image.open(buf).convert("RGB"))))
    return torch.stack(out).to(x.dtype)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip through Pillow (4:2:0 chroma, as photo sites store): B x 3 x H x W -> same."""
    return _codec_round_trip(x, "JPEG", quality)


def webp(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real lossy WebP round trip through Pillow: B x 3 x H x W -> same."""
    return _codec_round_trip(x, "WEBP", quality)


def jpeg_differentiable(x: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """kornia's differentiable JPEG (4:2:0, standard tables scaled by quality): B x 3 x H x W -> same,
    with gradients. ``quality``: one value or B values in [1, 100]."""
    q = torch.as_tensor(quality, dtype=x.dtype).reshape(-1)
    return kornia.enhance.jpeg_codec_differentiable(x, q.expand(len(x)) if len(q) == 1 else q)


def rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Down to ``scale`` of the side (antialiased) and back up, as a platform's resize then a viewer's zoom."""
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` px."""
    k = 2 * int(np.ceil(2 * sigma)) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma))


def random_recompression(x: torch.Tensor, cfg: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random upload, differentiable: with probability ``cfg['p_rescale']`` a downscale to a side
    share in ``cfg['scale']`` and back, with ``cfg['p_blur']`` a blur of sigma in ``cfg['sigma']``, then
    JPEG at a quality in ``cfg['quality']`` per image. One scale and sigma per batch. B x 3 x H x W -> same."""
    u = lambda lo, hi, n=1: lo + (hi - lo) * torch.rand(n, generator=generator)
    if torch.rand(1, generator=generator).item() < cfg["p_rescale"]:
        x = rescale(x, float(u(*cfg["scale"])))
    if torch.rand(1, generator=generator).item() < cfg["p_blur"]:
        x = blur(x, float(u(*cfg["sigma"])))
    return jpeg_differentiable(x.clamp(0, 1), u(*cfg["quality"], len(x)))


def diverse_input(x: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DI-FGSM's input diversity: with probability ``prob``, resize to a random side in [H, 1.1 H)
    and pad back to 1.1 H at a random place (differentiable). B x 3 x H x W -> B x 3 x H' x W'."""
    if torch.rand(1, generator=generator).item() >= prob:
        return x
    h = x.shape[-1]
    out = int(h * 1.1)
    side = int(torch.randint(h, out, (1,), generator=generator))
    left, top = (int(v) for v in torch.randint(0, out - side + 1, (2,), generator=generator))
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return F.pad(x, (left, out - side - left, top, out - side - top))


# What a protected photo meets on its way to an audience; the evaluation scores every method after each.
POST_PROCESSING: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "jpeg95": lambda x: jpeg(x, 95),
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg50": lambda x: jpeg(x, 50),
    "webp80": lambda x: webp(x, 80),
    "resize_half": lambda x: rescale(x, 0.5),
    "blur": lambda x: blur(x, 1.0),
}


def survives(quality: int | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The stop rule's round trip: a real JPEG at ``quality``, or None (no check) when it is None."""
    return None if quality is None else (lambda x: jpeg(x, int(quality)))
