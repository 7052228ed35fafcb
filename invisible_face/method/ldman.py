"""LD-MAN's networks and the perturbation they make (paper V-C, Fig. 2, Eq. 6-7; docs/design.md,
"The generator").

G protects a face in one forward pass. It is told three things about the face:

- the face itself, resized to ``work_size`` from the working frame;
- what to move away from: the plausible-class sets of every ensemble member's clean call
  (:func:`invisible_face.method.directions.clean_sets`), as FiLM on the middle blocks. Without them G
  would have to guess each face's gender before flipping it;
- where to start: DP, the sign of one backward pass of the whole ensemble on the clean frame
  (:func:`invisible_face.method.directions.set_direction`), as three extra input planes.

G is the refinement's start (docs/design.md, "The generator"): it learns from the refinement's own
final answers on its training faces (the ``answers`` stage) beside the adversarial loss, so that the
refinement finishes from G's output in fewer steps.

It emits a unit perturbation at ``out_size`` px, upsampled smoothly to the crop, weighted by a
feathered face mask (x^M = A * x, Eq. 1, with a soft A), scaled to epsilon (the L-inf budget) and
capped in RMS over the crop (the PSNR floor). Smooth perturbations are the least visible and
the ones that survive resizing and JPEG.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.method.directions import set_direction


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 1),
                         nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


class FiLMResidual(nn.Module):
    """Residual block whose normalised features are scaled and shifted by the condition (FiLM).

    forward(x: B x C x H x W, film: B x 2C) -> B x C x H x W.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm1, self.norm2 = nn.InstanceNorm2d(ch), nn.InstanceNorm2d(ch)

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        gamma, beta = film[:, :, None, None].chunk(2, 1)
        h = F.relu(self.norm1(self.conv1(x)) * (1 + gamma) + beta)
        return x + self.norm2(self.conv2(h))


class Generator(nn.Module):
    """G: (face at work size, plausible-class sets, direction) -> unit perturbation at out size.

    forward(face: B x 3 x S x S in [0, 1], sets: B x K in {0, 1} (the attributes' class sets,
    concatenated), direction: B x 3 x S x S in {-1, 0, 1} or None) -> B x 3 x s x s in [-1, 1],
    S = ``work_size``, s = ``out_size`` (a divisor of S). ``use_sets`` / ``use_direction`` False
    build the ablations without them (the inputs are then ignored).
    """

    def __init__(self, epsilon: float, set_size: int, width: int = 32, blocks: int = 3, work_size: int = 64,
                 out_size: int = 32, use_sets: bool = True, use_direction: bool = True) -> None:
        super().__init__()
        if work_size % out_size or work_size // out_size > 4:
            raise ValueError(f"out_size {out_size} must divide work_size {work_size} (at most 4x smaller)")
        self.epsilon, self.set_size, self.work_size, self.out_size = epsilon, set_size, work_size, out_size
        self.use_sets, self.use_direction = use_sets, use_direction
        down = int(math.log2(work_size // out_size)) + 1  # stride-2 stages to the middle (out_size / 2)
        chans = [3 + 3 * use_direction, width] + [min(4 * width, width * 2 ** (i + 1)) for i in range(down)]
        layers: list[nn.Module] = [_conv(chans[0], chans[1])]
        layers += [_conv(chans[i + 1], chans[i + 2], 4, 2) for i in range(down)]
        self.encode = nn.Sequential(*layers)
        mid = chans[-1]
        self.middle = nn.ModuleList(FiLMResidual(mid) for _ in range(blocks))
        self.film = nn.Linear(set_size, 2 * mid * blocks)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.decode = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    _conv(mid, width), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, face: torch.Tensor, sets: torch.Tensor, direction: torch.Tensor | None) -> torch.Tensor:
        x = face * 2 - 1
        if self.use_direction:
            x = torch.cat([x, direction if direction is not None else torch.zeros_like(face)], 1)
        h = self.encode(x)
        film = self.film(sets.float() if self.use_sets else torch.zeros_like(sets, dtype=h.dtype))
        for block, f in zip(self.middle, film.chunk(len(self.middle), 1)):
            h = block(h, f)
        return torch.tanh(self.decode(h))

    def config(self) -> dict:
        """What the constructor needs to rebuild this G (saved in the export)."""
        return {"epsilon": self.epsilon, "set_size": self.set_size, "width": self.encode[0][0].out_channels,
                "blocks": len(self.middle), "work_size": self.work_size, "out_size": self.out_size,
                "use_sets": self.use_sets, "use_direction": self.use_direction}


class Discriminator(nn.Module):
    """D: PatchGAN logits telling clean faces from protected ones. B x 3 x H x W -> B x 1 x h x w."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.InstanceNorm2d(2 * width, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.InstanceNorm2d(4 * width, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * width, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def sets_vector(classes: dict[str, torch.Tensor]) -> torch.Tensor:
    """{attribute: B x C bool} -> B x K float, the sets side by side (G's condition)."""
    return torch.cat([c.float() for c in classes.values()], 1)


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """B x C x H x W -> B x C x size, bilinear, antialiased when shrinking (as the surrogate resizes)."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                         antialias=size[0] < x.shape[-2] or size[1] < x.shape[-1])


def face_mask(points: np.ndarray, height: int, width: int, forehead: float, feather: float) -> torch.Tensor:
    """The soft region A: the landmarks' box, raised by ``forehead`` of its height (the 68 points
    stop at the eyebrows), with edges that ramp from 0 to 1 over ``feather`` of the box's side
    (no hard rectangle edge). points: 68 x 2 (x, y) in pixels -> 1 x H x W in [0, 1]."""
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    y0 = y0 - forehead * (y1 - y0)
    ramp = max(feather * max(x1 - x0, y1 - y0), 1.0)
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    rx = ((xs - x0) / ramp).clamp(0, 1) * ((x1 - xs) / ramp).clamp(0, 1)
    ry = ((ys - y0) / ramp).clamp(0, 1) * ((y1 - ys) / ramp).clamp(0, 1)
    return (ry[:, None] * rx[None, :])[None]


def cap_rms(delta: torch.Tensor, rms: float) -> torch.Tensor:
    """Scale each perturbation down to at most ``rms`` root-mean-square over its pixels (a PSNR
    floor of -20 log10(rms) dB). B x 3 x H x W -> same."""
    norm = delta.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    return delta * (rms / norm.clamp_min(1e-12)).clamp(max=1.0)


def psnr_to_rms(min_psnr: float | None) -> float:
    """The RMS perturbation of a PSNR floor in dB (images in [0, 1]); inf without a floor."""
    return float("inf") if min_psnr is None else 10 ** (-min_psnr / 20)


def generator_perturbation(generator: Generator, crop: torch.Tensor, mask: torch.Tensor, sets: torch.Tensor,
                           direction: torch.Tensor | None, rms: float) -> torch.Tensor:
    """eps_l for faces at any resolution: G at its work size, upsampled to the crop, times the
    mask and epsilon, capped in RMS, kept inside the valid pixel range.

    crop: B x 3 x H x W in [0, 1]; mask: B x 1 x H x W in [0, 1]; sets: B x K; direction:
    B x 3 x S x S or None -> B x 3 x H x W with |eps_l| <= epsilon * mask.
    """
    net = getattr(generator, "module", generator)  # G itself under DDP
    unit = generator(resize(crop, net.work_size), sets, direction)
    delta = net.epsilon * resize(unit, tuple(crop.shape[-2:])) * mask
    delta = cap_rms(delta, rms) if math.isfinite(rms) else delta
    return apply_perturbation(crop, delta) - crop


def apply_perturbation(image: torch.Tensor, eps_l: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with the valid pixel range: x^A = clip(x + eps_l, 0, 1). Same shapes in and out."""
    return (image + eps_l).clamp(0, 1)


def generator_protect(generator: Generator, surrogate: nn.Module, frames: torch.Tensor, masks: torch.Tensor,
                      cover: float, cap: float, rms: float, known: dict[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The deployed path of G: the surrogate's clean call and DP on the working frame (every ensemble
    member: one forward + backward pass; DP shrunk to G's work size), then one pass of G.
    frames: B x 3 x H x W; masks: B x 1 x H x W (where, and how much of epsilon, G may change);
    known: {attribute: B x C bool}, the true labels when known (else the clean call's plausible classes)
    -> (eps_l B x 3 x H x W, the sets {key: B x C bool}, every member's)."""
    direction, classes = set_direction(surrogate, frames, cover, cap, known, size=generator.work_size)
    with torch.no_grad():
        delta = generator_perturbation(generator, frames, masks, sets_vector(classes),
                                       direction if generator.use_direction else None, rms)
    return delta, classes
