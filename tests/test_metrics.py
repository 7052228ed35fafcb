import math

import pytest
import torch

from invisible_face.metrics import (
    fooled_rate,
    h_pn,
    mosr,
    mosr_by_count,
    mosr_correct,
    naturalness,
    psnr,
    ssim,
)

LABELS = {"gender": torch.tensor([0, 1, 0, 1]), "race": torch.tensor([2, 2, 0, 1])}


def test_mosr_counts_images_with_every_attribute_wrong():
    preds = {"gender": torch.tensor([1, 0, 0, 0]), "race": torch.tensor([1, 2, 1, 0])}
    # image 0: both wrong; 1: race right; 2: gender right; 3: both wrong
    assert mosr(preds, LABELS) == pytest.approx(0.5)
    clean = {"gender": torch.tensor([0, 1, 1, 1]), "race": torch.tensor([2, 2, 0, 1])}
    # images 0, 1, 3 were all right before; of those 0 and 3 are fooled
    assert mosr_correct(clean, preds, LABELS) == pytest.approx(2 / 3)
    assert math.isnan(mosr_correct({k: v + 1 for k, v in LABELS.items()}, preds, LABELS))


def test_fooled_rate_counts_right_calls_made_wrong_per_attribute():
    clean = {"gender": torch.tensor([0, 1, 1, 1]), "race": torch.tensor([2, 2, 0, 1])}
    after = {"gender": torch.tensor([1, 1, 0, 0]), "race": torch.tensor([2, 2, 0, 1])}
    # gender: images 0, 1, 3 right before; 0 and 3 wrong after. race: all right, none moved
    assert fooled_rate(clean, after, LABELS) == {"gender": pytest.approx(2 / 3), "race": 0.0}
    assert math.isnan(fooled_rate({k: v + 1 for k, v in LABELS.items()}, after, LABELS)["race"])


def test_identical_images_give_ssim_one_and_infinite_psnr():
    x = torch.rand(2, 3, 32, 32)
    assert ssim(x, x.clone()).min().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.isinf(psnr(x, x.clone())).all()
    assert naturalness(1.0, float("inf")) == pytest.approx(1.0)


def test_psnr_of_a_known_error():
    x = torch.zeros(1, 3, 8, 8)
    assert psnr(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-4)
    assert ssim(x + 0.5, (x + 0.5 + 0.2 * torch.randn_like(x)).clamp(0, 1)).item() < 0.9


def test_h_pn_is_a_harmonic_mean():
    assert h_pn(1.0, 1.0, 50.0) == pytest.approx(1.0)
    s_nat = naturalness(0.9, 30.0)
    assert s_nat == pytest.approx(0.5 * 0.9 + 0.5 * 0.5)
    assert h_pn(0.5, 0.9, 30.0) == pytest.approx(2 / (1 / 0.5 + 1 / s_nat))
    assert h_pn(0.0, 1.0, 40.0) == 0.0


def test_mosr_by_count_averages_every_subset():
    preds = {"gender": torch.tensor([1, 0, 0, 0]), "race": torch.tensor([1, 2, 1, 0])}
    # gender fooled on 0, 1, 3; race on 0, 2, 3; both on 0, 3
    by_count = mosr_by_count(preds, LABELS)
    assert by_count[1] == pytest.approx((0.75 + 0.75) / 2)
    assert by_count[2] == pytest.approx(mosr(preds, LABELS)) == pytest.approx(0.5)


def test_ssim_map_equals_kornia_and_drops_with_noise():
    import kornia

    from invisible_face.metrics import ssim_map
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 30, 44)
    noisy = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
    ours = ssim_map(clean, noisy)
    assert torch.allclose(ours, kornia.metrics.ssim(clean, noisy, 11, max_val=1.0), atol=1e-4)
    assert ours.mean() < 0.9
