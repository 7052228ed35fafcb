"""Gradient baselines adapted to several attributes (paper VI-D): FGSM, PGD, MI-FGSM, TI-FGSM,
DI-TI-FGSM and VMI-FGSM share one L-inf loop that descends the capped per-attribute margin of ``adversarial_loss``.

Images B x 3 x H x W in [0, 1]; the surrogate resizes them itself, so attacks run at full resolution.
"""

from __future__ import annotations

import kornia
import torch
from torch import nn

from invisible_face.method.losses import adversarial_loss
from invisible_face.method.recompression import diverse_input


def _loss_grad(model: nn.Module, x: torch.Tensor, labels: dict[str, torch.Tensor], kappa: float,
               di_prob: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    inputs = diverse_input(x, di_prob, generator) if di_prob > 0 else x
    (grad,) = torch.autograd.grad(adversarial_loss(model(inputs), labels, kappa) * len(x), x)
    return grad


def iterative_attack(model: nn.Module, images: torch.Tensor, labels: dict[str, torch.Tensor], epsilon: float,
                     steps: int, alpha: float, *, kappa: float = 5.0, momentum: float = 0.0,
                     ti_sigma: float = 0.0, di_prob: float = 0.0, vmi_neighbours: int = 0, vmi_radius: float = 1.5,
                     mask: torch.Tensor | None = None, random_start: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The common loop. momentum > 0: MI-FGSM; ti_sigma > 0: TI-FGSM's Gaussian-smoothed gradient;
    di_prob > 0: DI-FGSM's input diversity (:func:`diverse_input`);
    vmi_neighbours > 0: VMI-FGSM's variance tuning with neighbours in +-vmi_radius * epsilon.
    ``mask`` (B x 1 x H x W) restricts the perturbation to a region. -> x^A, same shape."""
    model.eval()
    delta = torch.zeros_like(images)
    if random_start:
        delta = (torch.rand(images.shape, generator=generator) * 2 - 1).to(images) * epsilon
    if mask is not None:
        delta = delta * mask
    g_momentum = torch.zeros_like(images)
    variance = torch.zeros_like(images)
    for _ in range(steps):
        x = (images + delta).clamp(0, 1)
        grad = _loss_grad(model, x, labels, kappa, di_prob, generator)
        if ti_sigma > 0:
            k = 2 * int(round(3 * ti_sigma)) + 1
            grad = kornia.filters.gaussian_blur2d(grad, (k, k), (ti_sigma, ti_sigma))
        current = grad + variance
        if vmi_neighbours > 0:
            around = torch.stack([
                _loss_grad(model, (x + (torch.rand(x.shape, generator=generator).to(x) * 2 - 1)
                                   * vmi_radius * epsilon).clamp(0, 1),
                           labels, kappa)
                for _ in range(vmi_neighbours)]).mean(0)
            variance = around - grad
        if momentum > 0:
            g_momentum = (momentum * g_momentum
                          + current / current.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1))
            current = g_momentum
        delta = (delta - alpha * current.sign()).clamp(-epsilon, epsilon)  # descend: lower the true-class margin
        if mask is not None:
            delta = delta * mask
        delta = (images + delta).clamp(0, 1) - images
    return (images + delta).detach()


def baseline_attack(name: str, model: nn.Module, images: torch.Tensor, labels: dict[str, torch.Tensor],
                    epsilon: float, steps: int = 10, kappa: float = 5.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's baselines by name, with the usual settings: step epsilon/steps*1.6 for the
    iterative ones (PGD: epsilon/4 with a random start), mu = 1, TI sigma 3 px, DI p = 0.5, VMI N = 5,
    radius 1.5."""
    alpha = 1.6 * epsilon / steps
    settings = {
        "fgsm": dict(steps=1, alpha=epsilon),
        "pgd": dict(steps=steps, alpha=epsilon / 4, random_start=True),
        "mifgsm": dict(steps=steps, alpha=alpha, momentum=1.0),
        "tifgsm": dict(steps=steps, alpha=alpha, momentum=1.0, ti_sigma=3.0),
        "ditifgsm": dict(steps=steps, alpha=alpha, momentum=1.0, ti_sigma=3.0, di_prob=0.5),
        "vmifgsm": dict(steps=steps, alpha=alpha, momentum=1.0, vmi_neighbours=5, vmi_radius=1.5),
    }
    if name not in settings:
        raise ValueError(f"unknown baseline {name!r}: choose from {sorted(settings)}")
    return iterative_attack(model, images, labels, epsilon, kappa=kappa, mask=mask,
                            generator=torch.Generator().manual_seed(0), **settings[name])
