"""DP, the directional perturbation G is given (paper V-C-2; docs/design.md, "The generator").

The paper's eps_d (Algorithm 2) is the sign of the surrogate's attribute gradients at the clean
image. Here it is computed without labels, on the objective the protector itself minimises: the
sign of the descent direction of :func:`invisible_face.models.margins.set_margin_loss` away from the
plausible-class sets of every ensemble member's clean call, each member's gradient at unit norm
(as the refinement's steps weigh them). It depends only on the clean face: the ``answers`` stage
caches it for G's training faces (packed one bit per value) and the protector computes it once per
face (one forward and one backward pass of the ensemble on the working frame, shrunk to G's work
size). It enters G as input planes (Eq. 6 adds beta * eps_d to G's output instead; an input lets G
shape the direction rather than add noise of the full budget's sign).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.models.ensemble import attribute_of, member_groups, unit_rms
from invisible_face.models.margins import plausible_classes, set_margin_loss


def clean_sets(logits: dict[str, torch.Tensor], cover: float, known: dict[str, torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor]:
    """The sets to steer each head away from: ``known`` (one-hot true labels by attribute) when given,
    for every member's head of that attribute, else the plausible classes of the clean call
    -> {key: B x C bool} for every key of ``logits``."""
    if known is not None:
        return {k: known[attribute_of(k)] for k in logits}
    return {k: plausible_classes(v.detach(), cover) for k, v in logits.items()}


def set_direction(model: nn.Module, images: torch.Tensor, cover: float, cap: float,
                  known: dict[str, torch.Tensor] | None = None, size: int | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Label-free DP and the sets it steers away from, in one forward + backward pass of ``model``
    (a classifier or a :class:`~invisible_face.models.ensemble.SurrogateEnsemble`).

    images: B x 3 x H x W in [0, 1]; known: {attribute: B x C bool}, the true labels one-hot when
    known (else the plausible classes of the clean call, :func:`clean_sets`); size: the side the
    gradient is shrunk to before its sign (G's work size; None: H x W)
    -> (direction B x 3 x size x size in {-1, 0, 1}: the sign of the step that lowers the capped set
    margins, each member's part at unit norm; the sets {key: B x C bool}).
    """
    was_training = model.training
    model.eval()
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        classes = clean_sets(logits, cover, known)
        groups = member_groups(logits)
        grad = torch.zeros_like(x)
        for keys in groups:
            loss = set_margin_loss({k: logits[k] for k in keys}, {k: classes[k] for k in keys}, cap).sum()
            (g,) = torch.autograd.grad(loss, x, retain_graph=True)
            grad = grad + (unit_rms(g) if len(groups) > 1 else g)
    model.train(was_training)
    if size is not None and size != grad.shape[-1]:
        grad = F.interpolate(grad, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return -torch.sign(grad), classes


def pack_signs(signs: torch.Tensor) -> tuple[bytes, tuple[int, ...]]:
    """Store a sign map in one bit per value (zeros, which have measure zero, become +1)."""
    bits = np.packbits((signs >= 0).cpu().numpy().astype(np.uint8).ravel())
    return bits.tobytes(), tuple(signs.shape)


def unpack_signs(data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_signs` -> float tensor of +-1."""
    n = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1).view(shape)
