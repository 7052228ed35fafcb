"""DP, the directional perturbation G is given (paper V-C-2; docs/design.md, "The generator").

The paper's eps_d (Algorithm 2) is the sign of the surrogate's attribute gradients at the clean
image. Here it is computed without labels, on the objective the protector itself minimises: the
sign of the descent direction of :func:`invisible_face.models.margins.set_margin_loss` away from the
plausible-class sets of the surrogate's clean call. It depends only on the clean face, so it is
computed once per training chip (the ``directions`` stage caches it, packed one bit per value)
and once per face at inference: one forward and one backward pass of the surrogate at its input
size. It enters G as input planes (Eq. 6 adds beta * eps_d to G's output instead; an input lets G
shape the direction rather than add noise of the full budget's sign).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from invisible_face.models.margins import plausible_classes, set_margin_loss


def set_direction(model: nn.Module, images: torch.Tensor, cover: float, cap: float,
                  classes: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Label-free DP and the sets it steers away from, in one forward + backward pass.

    images: B x 3 x H x W in [0, 1] (best at the model's input size); classes: {attribute: B x C
    bool} sets to steer away from when known (e.g. the true labels one-hot), else the plausible
    classes of the clean call (:func:`plausible_classes` with ``cover``) -> (direction B x 3 x H x W
    in {-1, 0, 1}: the sign of the step that lowers the capped set margins; the sets).
    """
    was_training = model.training
    model.eval()
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if classes is None:
            classes = {k: plausible_classes(v.detach(), cover) for k, v in logits.items()}
        (grad,) = torch.autograd.grad(set_margin_loss(logits, classes, cap).sum(), x)
    model.train(was_training)
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
