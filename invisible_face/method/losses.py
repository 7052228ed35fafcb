"""LD-MAN's losses (paper Eq. 5, 12-19), each a small pure function on tensors.

Shapes: images B x 3 x H x W in [0, 1]; logits {attribute: B x C}; labels {attribute: B}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attribute_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the best other logit: B x C, B -> B (negative = misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.max(dim=1).values


def adversarial_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], kappa: float) -> torch.Tensor:
    """Eq. 12 as a loss to minimise: push every attribute's true class below another class.

    Per attribute the margin is capped at -kappa, so an attribute already fooled with confidence
    kappa stops pulling and the others get the gradient (docs/design.md, "Losses": a summed
    cross-entropy lets one head dominate). Attributes are weighted equally. -> scalar.
    """
    per_attribute = [attribute_margin(logits[k], labels[k]).clamp(min=-kappa).mean() for k in labels]
    return torch.stack(per_attribute).mean()


def perturbation_loss(perturbation: torch.Tensor) -> torch.Tensor:
    """Eq. 13: mean L2 norm of the perturbation. B x 3 x H x W -> scalar."""
    return perturbation.flatten(1).norm(dim=1).mean()


def total_variation(image: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 15, isotropic TV summed over pixels and channels, averaged over the batch.
    B x C x H x W -> scalar.

    kornia's ``total_variation`` is the anisotropic (L1) form; Eq. 15 takes the square root of
    the summed squared differences, which is what this computes (``eps`` keeps its gradient finite).
    """
    dx = image[..., :-1, 1:] - image[..., :-1, :-1]
    dy = image[..., 1:, :-1] - image[..., :-1, :-1]
    return torch.sqrt(dx**2 + dy**2 + eps).flatten(1).sum(1).mean()


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Eq. 14: squared MMD between two batches with a sum of Gaussian kernels (biased estimate).

    x, y: B x ... -> scalar. Bandwidths are multiples of the median pairwise distance, so the
    loss does not depend on the image size.
    """
    a, b = x.flatten(1), y.flatten(1)
    joint = torch.cat([a, b])
    d2 = torch.cdist(joint, joint).pow(2)
    scale = d2.detach()[d2.detach() > 0].median() if (d2.detach() > 0).any() else d2.new_tensor(1.0)
    kernel = sum(torch.exp(-d2 / (bw * scale)) for bw in bandwidths)
    n = len(a)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def contextual_loss(fx: torch.Tensor, fy: torch.Tensor, h: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 17: contextual loss (Mechrez et al. 2018) between feature maps, bandwidth ``h``.

    fx, fy: B x C x H x W features -> scalar; 0 when the features match one to one.
    """
    mu = fy.mean(dim=(0, 2, 3), keepdim=True)
    x = F.normalize((fx - mu).flatten(2), dim=1)  # B x C x N
    y = F.normalize((fy - mu).flatten(2), dim=1)
    dist = 1 - torch.bmm(x.transpose(1, 2), y)  # B x N x N cosine distances
    rel = dist / (dist.min(dim=2, keepdim=True).values + eps)
    w = torch.exp((1 - rel) / h)
    cx = w / w.sum(dim=2, keepdim=True)
    similarity = cx.max(dim=1).values.mean(dim=1)  # B
    return -torch.log(similarity + eps).mean()


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 5, D's side: real images to 1, protected ones to 0. Logits B -> scalar."""
    return F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
        F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))


def generator_gan_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 5, G's side in the non-saturating form: make D call protected images real. B -> scalar."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
