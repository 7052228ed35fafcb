import torch

from invisible_face.method.visibility import (
    grey_levels,
    jnd_map,
    local_std,
    luminance_adaptation,
    texture_ratio,
    visibility_budget,
)


def _half_textured(side: int = 32) -> torch.Tensor:
    """1 x 3 x side x side: a flat skin tone on the left, a high-contrast checkerboard on the right."""
    torch.manual_seed(0)
    image = torch.full((1, 3, side, side), 0.6)
    checker = ((torch.arange(side)[:, None] + torch.arange(side)[None]) % 2).float()
    image[..., side // 2:] = 0.3 + 0.4 * checker[:, side // 2:]
    return image


def test_grey_levels_span_0_to_255():
    assert torch.allclose(grey_levels(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 1, 2, 2))
    assert torch.allclose(grey_levels(torch.ones(1, 3, 2, 2)), torch.full((1, 1, 2, 2), 255.0))


def test_luminance_adaptation_is_high_on_black_and_lowest_at_mid_grey():
    la = luminance_adaptation(torch.tensor([0.0, 127.0, 255.0]))
    assert torch.allclose(la, torch.tensor([20.0, 3.0, 6.0]))


def test_local_std_is_zero_on_a_flat_image_and_large_on_a_checkerboard():
    image = _half_textured()
    std = local_std(grey_levels(image))
    assert std[..., :, :10].max() < 1e-3
    assert std[..., :, 22:].min() > 40


def test_jnd_is_larger_in_texture_than_on_flat_skin():
    jnd = jnd_map(_half_textured())
    assert jnd.shape == (1, 1, 32, 32)
    assert jnd[..., 22:].min() > 5 * jnd[..., :10].max()


def test_budget_gives_texture_the_whole_epsilon_and_smooth_skin_the_floor():
    image, mask = _half_textured(), torch.ones(1, 1, 32, 32)
    budget = visibility_budget(image, mask, floor=0.2, reference=0.8)
    assert budget.min() >= 0.2 and budget.max() <= 1.0
    assert budget[..., 22:].min() > 0.9
    assert torch.allclose(budget[..., :10], torch.full((1, 1, 32, 10), 0.2))


def test_texture_ratio_tells_where_the_change_went():
    image, mask = _half_textured(), torch.ones(1, 1, 32, 32)
    smooth_only = image.clone()
    smooth_only[..., :16] += 0.02
    texture_only = image.clone()
    texture_only[..., 16:] += 0.02
    assert texture_ratio(image, smooth_only, mask) > 2
    assert texture_ratio(image, texture_only, mask) < 0.5
    assert torch.isnan(texture_ratio(image, image, mask)).all()
