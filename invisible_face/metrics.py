"""Evaluation metrics (paper VI-F; docs/design.md, "Metrics"). Images are B x 3 x H x W in [0, 1].

Pure functions on tensors, at the bottom of the package: every floor scores with them (the
classifiers' test report in ``models``, G's and RP's validation in ``method``, the evaluation in
``evaluate``), so none of them has to import a floor above its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from invisible_face.filters import gaussian_blur


def fooled_all(predictions: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """B bool: every attribute's prediction differs from its true label."""
    return torch.stack([predictions[k] != labels[k] for k in labels]).all(0)


def mosr(predictions: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> float:
    """Eq. 21: share of images whose attributes are all mis-predicted after protection."""
    return fooled_all(predictions, labels).float().mean().item()


def mosr_by_count(predictions: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[int, float]:
    """Fig. 8 style stability: for k = 1..A, MOSR over k protected attributes, averaged over every
    k-subset of the attributes (k = A is :func:`mosr`)."""
    from itertools import combinations

    by_count = {}
    for k in range(1, len(labels) + 1):
        subsets = list(combinations(labels, k))
        by_count[k] = sum(mosr({a: predictions[a] for a in sub}, {a: labels[a] for a in sub})
                          for sub in subsets) / len(subsets)
    return by_count


def mosr_correct(clean_predictions: dict[str, torch.Tensor], predictions: dict[str, torch.Tensor],
                 labels: dict[str, torch.Tensor]) -> float:
    """MOSR over the images whose attributes were all predicted right before protection (NaN if none)."""
    right = torch.stack([clean_predictions[k] == labels[k] for k in labels]).all(0)
    if not right.any():
        return float("nan")
    return fooled_all(predictions, labels)[right].float().mean().item()


def fooled_rate(clean_predictions: dict[str, torch.Tensor], predictions: dict[str, torch.Tensor],
                labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per attribute, the share of the images predicted right before protection that are predicted
    wrong after it (NaN where none was right): {attribute: B} x 3 -> {attribute: float}."""
    rates = {}
    for k in labels:
        right = clean_predictions[k] == labels[k]
        rates[k] = (predictions[k][right] != labels[k][right]).float().mean().item() if right.any() else float("nan")
    return rates


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004), as kornia.metrics.ssim
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # on a [0, 1] range


def ssim_from_moments(mean_a: torch.Tensor, mean_b: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor,
                      cov: torch.Tensor) -> torch.Tensor:
    """The SSIM map from its local moments (each B x C x H x W, Gaussian-weighted): a separate step so
    that a caller who knows the moments in closed form (a change scaled along its own direction,
    :func:`invisible_face.method.visibility.scale_to_face_ssim`) skips the filtering."""
    num = (2 * mean_a * mean_b + SSIM_C1) * (2 * cov + SSIM_C2)
    return num / ((mean_a**2 + mean_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2) + 1e-12)


def ssim_map(clean: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """SSIM at each pixel and channel (11 x 11 Gaussian window of sigma 1.5, borders reflected: equal to
    ``kornia.metrics.ssim`` to 1e-5, at a fifth of its time on a CPU). B x C x H x W each -> same."""
    def blur(x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, SSIM_SIGMA, SSIM_WINDOW)

    mean_a, mean_b = blur(clean), blur(protected)
    return ssim_from_moments(mean_a, mean_b, blur(clean * clean) - mean_a**2, blur(protected * protected) - mean_b**2,
                             blur(clean * protected) - mean_a * mean_b)


def ssim(clean: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (:func:`ssim_map` averaged). -> B."""
    return ssim_map(clean, protected).flatten(1).mean(1)


def psnr(clean: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB; +inf for identical images. -> B."""
    mse = (clean - protected).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def naturalness(ssim_value: float, psnr_value: float) -> float:
    """S_nat = 0.5 SSIM + 0.5 PSNR*, PSNR* = clip((PSNR - 10) / 40, 0, 1) (docs/design.md, "Metrics")."""
    psnr_star = min(max((psnr_value - 10) / 40, 0.0), 1.0)
    return 0.5 * ssim_value + 0.5 * psnr_star


def h_pn(mosr_value: float, ssim_value: float, psnr_value: float) -> float:
    """Eq. 22: harmonic mean of MOSR and S_nat (0 when either is 0)."""
    s_nat = naturalness(ssim_value, psnr_value)
    if mosr_value <= 0 or s_nat <= 0:
        return 0.0
    return 2 / (1 / mosr_value + 1 / s_nat)


def accuracy_and_confusion(preds: dict[str, Any], labels: dict[str, Any], n_classes: dict[str, int]
                           ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """{attribute: N predicted}, {attribute: N true} -> ({attribute: accuracy}, {attribute: n x n
    confusion matrix, rows true, columns predicted}), every classifier's test report."""
    accuracy, confusion = {}, {}
    for a, p in preds.items():
        y, n = np.asarray(labels[a]), n_classes[a]
        p = np.asarray(p)
        accuracy[a] = float((p == y).mean())
        confusion[a] = np.bincount(y * n + p, minlength=n * n).reshape(n, n)
    return accuracy, confusion
