"""Heuristic local region selection (paper section V-B, Eq. 1-3, Algorithm 1).

The objective of a rectangle R on image x (Eq. 3):

    SE(R) = theta_m / K * sum_k DE(M_k(A_R * x), M_k(x)) + theta_s * S(R)

with DE the KL divergence between the surrogate's class probabilities on the masked and the clean
image (cross-entropy minus the clean entropy, a constant per image, so the same minimiser), and S
the area fraction.

Algorithm 1 walks the landmarks sorted by abscissa: candidate k has its top-left corner at the k-th
point and its bottom-right corner at that point reflected through the centre p_c. The candidates
therefore do not depend on which moves were accepted, so all of them are scored in one batched
forward pass and the annealing then runs over the precomputed objectives (docs/design.md, "Regions").
The walk keeps the best state it visited, as annealing implementations usually do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# iBUG-68 indices of the points a centre is drawn from: nose 27-35, eyes 36-47, mouth 48-67,
# the regions the paper names as most attribute-bearing.
CENTER_POINTS = np.arange(27, 68)


@dataclass
class Region:
    """A selected rectangle (x0, y0, x1, y1) in pixels with the search's record."""

    rect: tuple[float, float, float, float]
    area: float
    objective: float
    divergence: float
    center: tuple[float, float]
    trajectory: list[float] = field(default_factory=list)
    scored: int = 0  # candidates the surrogate scored


def rect_masks(rects: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """0-1 masks of axis-aligned rectangles (the paper's A, Eq. 1).

    rects: N x 4 as (x0, y0, x1, y1) in pixels, x1/y1 exclusive -> N x 1 x H x W float.
    """
    ys = torch.arange(height, dtype=rects.dtype).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=rects.dtype).view(1, 1, width) + 0.5
    x0, y0, x1, y1 = (rects[:, i].view(-1, 1, 1) for i in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return inside.unsqueeze(1).to(rects.dtype)


def candidate_rects(points: np.ndarray, center: np.ndarray, height: int, width: int) -> np.ndarray:
    """Algorithm 1's candidates: for each landmark p in abscissa order, the rectangle spanned by p
    and its reflection 2*p_c - p, clipped to the image.

    points: 68 x 2 (x, y); center: 2 -> 68 x 4 (x0, y0, x1, y1), in the sorted order.
    """
    ordered = points[np.argsort(points[:, 0], kind="stable")]
    reflected = 2 * center[None, :] - ordered
    lo, hi = np.minimum(ordered, reflected), np.maximum(ordered, reflected)
    rects = np.concatenate([lo, hi], axis=1)
    return np.clip(rects, 0, [width, height, width, height]).astype(np.float32)


def clean_log_probs(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's log-probabilities on the clean image: 3 x H x W -> {attribute: 1 x C}."""
    with torch.no_grad():
        return {k: F.log_softmax(v, dim=1) for k, v in model(image[None]).items()}


@torch.no_grad()
def score_rects(model: nn.Module, image: torch.Tensor, rects: torch.Tensor, chunk: int = 0,
                clean: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attribute KL divergence and area fraction of each rectangle, in batched passes.

    image: 3 x H x W in [0, 1]; rects: N x 4 -> (divergence N, area N). The masks are area-averaged
    down to the model's input size together with the image, so the network sees what it would see
    of the full-resolution masked image without resizing N full-size copies. ``chunk`` > 0 scores
    that many rectangles per forward pass (1 gives the one-at-a-time baseline of the benchmark).
    ``clean``: :func:`clean_log_probs` of the image, when the caller already has them.
    """
    _, height, width = image.shape
    size = getattr(model, "input_size", min(height, width))
    small = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    masks = F.adaptive_avg_pool2d(rect_masks(rects, height, width), (size, size))
    clean = clean if clean is not None else clean_log_probs(model, image)
    divergence = torch.zeros(len(rects))
    step = chunk if chunk > 0 else len(rects)
    for start in range(0, len(rects), step):
        logits = model(small * masks[start:start + step])
        for name, log_p in clean.items():
            log_q = F.log_softmax(logits[name], dim=1)
            divergence[start:start + step] += (log_p.exp() * (log_p - log_q)).sum(dim=1)
    divergence /= len(clean)
    area = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1]) / (height * width)
    return divergence, area


def anneal(objective: Callable[[int], float], points: np.ndarray, center: np.ndarray, t_max: float,
           t_min: float, k: float, rng: np.random.Generator) -> tuple[int, list[float]]:
    """Algorithm 1's loop (lines 7-20) over the candidates in abscissa order.

    objective(i): SE of candidate i; points: the landmarks in the same order (the loop runs while
    the accepted top-left point lies above and left of the centre). Returns the index of the best
    visited candidate and the objective after each step.
    """
    current = best = 0
    trajectory = [objective(0)]
    step = 0
    while (points[current, 0] < center[0] and points[current, 1] < center[1]
           and t_max * k**step > t_min and step + 1 < len(points)):
        temperature = t_max * k**step
        candidate = step + 1  # idx + 1: the walk proposes the next point whatever was accepted
        delta = objective(candidate) - objective(current)
        u = rng.uniform()  # drawn every step, so runs that differ only in weights share the stream
        if delta < 0 or math.exp(-delta / temperature) > u:
            current = candidate
            if objective(current) < objective(best):
                best = current
        trajectory.append(objective(current))
        step += 1
    return best, trajectory


class _LazyObjectives:
    """SE of the candidates, scored ``batch`` at a time in one forward pass when the walk first
    needs one of them (the walk usually stops after a handful of proposals)."""

    def __init__(self, model: nn.Module, image: torch.Tensor, clean: dict[str, torch.Tensor], rects: np.ndarray,
                 batch: int, theta_m: float, theta_s: float, chunk: int) -> None:
        self.model, self.image, self.clean, self.rects = model, image, clean, rects
        self.batch, self.chunk = batch, chunk
        self.theta_m, self.theta_s = theta_m, theta_s
        self.divergence = np.full(len(rects), np.nan)
        self.area = np.full(len(rects), np.nan)

    def __call__(self, i: int) -> float:
        if np.isnan(self.divergence[i]):
            stop = min(i + self.batch, len(self.rects))
            div, area = score_rects(self.model, self.image, torch.from_numpy(self.rects[i:stop]), self.chunk,
                                    self.clean)
            self.divergence[i:stop], self.area[i:stop] = div.numpy(), area.numpy()
        return float(self.theta_m * self.divergence[i] + self.theta_s * self.area[i])

    @property
    def scored(self) -> int:
        return int((~np.isnan(self.divergence)).sum())


def select_region(model: nn.Module, image: torch.Tensor, points: np.ndarray, cfg: dict,
                  rng: np.random.Generator, chunk: int = 0, clean: dict[str, torch.Tensor] | None = None) -> Region:
    """Algorithm 1 on one image.

    image: 3 x H x W in [0, 1]; points: 68 x 2 landmarks (x, y) in pixels; cfg: ``regions`` params
    (t_max, t_min, k, theta_m, theta_s, restarts, score_batch). Each restart draws a new centre
    from the eyes, nose and mouth; the best region over restarts wins. ``chunk`` > 0 caps the
    rectangles per forward pass (1: the one-at-a-time baseline of the benchmark). ``clean``:
    :func:`clean_log_probs` of the image when the caller has them (computed once either way).
    """
    _, height, width = image.shape
    clean = clean if clean is not None else clean_log_probs(model, image)
    ordered = points[np.argsort(points[:, 0], kind="stable")]
    best: Region | None = None
    for center in points[rng.choice(CENTER_POINTS, size=cfg["restarts"], replace=False)]:
        rects = candidate_rects(points, center, height, width)
        objective = _LazyObjectives(model, image, clean, rects, cfg["score_batch"], cfg["theta_m"], cfg["theta_s"],
                                    chunk)
        i, trajectory = anneal(objective, ordered, center, cfg["t_max"], cfg["t_min"], cfg["k"], rng)
        if best is None or objective(i) < best.objective:
            best = Region(tuple(float(v) for v in rects[i]), float(objective.area[i]), objective(i),
                          float(objective.divergence[i]), (float(center[0]), float(center[1])),
                          trajectory, objective.scored)
    return best
