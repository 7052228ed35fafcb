"""Directional perturbation DP (paper V-C-2, Algorithm 2, Eq. 8-11).

eps_d = sign(g_intra + g_inter) depends only on the clean image, so it is computed once per image
(DESIGN.md decision 5): cached by the ``directions`` stage for training, once per face at inference.

Two readings of the paper had to be settled:
- Algorithm 2 line 6 draws x^i = x + clip(U(0, 1), -eps, eps), which only ever adds; Eq. 8 follows
  VMI-FGSM, whose neighbours are x + U(-r, r). We use U(-r, r) with r = ``neighbourhood_radius``
  (VMI-FGSM's beta * eps; not the paper's beta, which weighs eps_d in Eq. 6).
- Algorithm 2 line 7 accumulates squared differences, Eq. 8 the plain difference of the gradient
  at x and the neighbours' mean gradient. We follow Eq. 8, the variance-tuning term of VMI-FGSM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attribute_gradients(model: nn.Module, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradient of each attribute's cross-entropy w.r.t. the input, one forward for all of them.

    images: B x 3 x H x W; labels: {attribute: B} -> {attribute: B x 3 x H x W}.
    """
    images = images.detach().requires_grad_(True)
    logits = model(images)
    grads = {}
    names = list(labels)
    for i, name in enumerate(names):
        loss = F.cross_entropy(logits[name], labels[name], reduction="sum")
        (grads[name],) = torch.autograd.grad(loss, images, retain_graph=i < len(names) - 1)
    return grads


def directional_perturbation(model: nn.Module, images: torch.Tensor, labels: dict[str, torch.Tensor],
                             n_neighbours: int, neighbourhood_radius: float,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 2: eps_d in {-1, 0, 1}, B x 3 x H x W, the sign of the variance-reduced
    intra-attribute gradients plus the inter-attribute mean gradient.

    The image and its ``n_neighbours`` neighbours go through the surrogate in one batch.
    """
    b = images.shape[0]
    noise = (torch.rand((n_neighbours, *images.shape), generator=generator) * 2 - 1) * neighbourhood_radius
    neighbours = (images[None] + noise.to(images)).clamp(0, 1).flatten(0, 1)  # (N*B) x 3 x H x W
    batch = torch.cat([images, neighbours])
    batch_labels = {k: v.repeat(n_neighbours + 1) for k, v in labels.items()}
    was_training = model.training
    model.eval()
    grads = attribute_gradients(model, batch, batch_labels)
    model.train(was_training)

    g_intra = torch.zeros_like(images)
    g_inter = torch.zeros_like(images)
    for g in grads.values():
        g_x = g[:b]
        g_neighbours = g[b:].view(n_neighbours, *images.shape).mean(0)
        v = g_x - g_neighbours                                            # Eq. 8
        g_inter += g_x
        diff = g_x - v
        g_intra += diff / diff.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)  # Eq. 9
    g_inter /= n_neighbours                                               # Eq. 10
    return torch.sign(g_intra + g_inter)                                  # Eq. 11


def pack_signs(signs: torch.Tensor) -> tuple[bytes, tuple[int, ...]]:
    """Store a sign map in one bit per value (zeros, which have measure zero, become +1)."""
    import numpy as np

    bits = np.packbits((signs >= 0).cpu().numpy().astype(np.uint8).ravel())
    return bits.tobytes(), tuple(signs.shape)


def unpack_signs(data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_signs` -> float tensor of +-1."""
    import numpy as np

    n = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1).view(shape)
