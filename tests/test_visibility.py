import pytest
import torch

from invisible_face.method.visibility import (
    CleanFaces,
    ciede2000,
    colour_bound,
    face_ssim,
    face_ssim_along,
    grey_levels,
    jnd_bound,
    jnd_map,
    limit_chroma,
    local_std,
    luminance_adaptation,
    perceptual_projection,
    scale_to_face_ssim,
    skin_delta_e,
    smooth_pixels,
    split_chroma,
    texture_ratio,
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


def test_jnd_bound_is_small_on_flat_skin_and_capped_in_texture():
    bound = jnd_bound(_half_textured(), scale=2.0, ceiling=24 / 255)
    assert bound.shape == (1, 1, 32, 32)
    assert torch.allclose(bound[..., 22:], torch.full_like(bound[..., 22:], 24 / 255))
    assert bound[..., :10].max() < 8 / 255  # about 2 x 3 grey levels on mid-grey skin
    assert bound.min() > 0


def test_limit_chroma_clips_the_colour_part_and_keeps_the_luma():
    delta = torch.zeros(1, 3, 4, 4)
    delta[:, 0], delta[:, 1], delta[:, 2] = 0.05, -0.01, -0.01
    limited = limit_chroma(delta, torch.full((1, 1, 4, 4), 0.01))
    luma, chroma = split_chroma(limited)
    assert torch.allclose(luma, split_chroma(delta)[0])
    assert chroma.abs().max() <= 0.01 + 1e-7
    assert chroma.abs().max() > 0.009


def test_face_ssim_is_one_unchanged_and_measured_inside_the_mask_box():
    clean, mask = _half_textured(), torch.zeros(1, 1, 32, 32)
    mask[..., :, :14] = 1
    assert face_ssim(clean, clean, mask).item() == pytest.approx(1.0, abs=1e-5)
    outside = clean.clone()
    outside[..., 20:] = 1 - outside[..., 20:]
    assert face_ssim(clean, outside, mask).item() == pytest.approx(1.0, abs=1e-5)
    inside = clean + 0.1 * torch.randn_like(clean)
    assert face_ssim(clean, inside.clamp(0, 1), mask).item() < 0.9


def test_scale_to_face_ssim_meets_the_target_and_leaves_a_face_under_it_alone():
    torch.manual_seed(0)
    clean, mask = torch.rand(2, 3, 32, 32) * 0.5 + 0.25, torch.ones(2, 1, 32, 32)
    delta = 0.1 * torch.randn_like(clean)
    delta[1] *= 0.01
    delta = (clean + delta).clamp(0, 1) - clean  # a change inside the image range, as the refinement's
    scaled = scale_to_face_ssim(clean, delta, mask, 0.9)
    after = face_ssim(clean, (clean + scaled).clamp(0, 1), mask)
    assert after[0] >= 0.9 and after[0] < 0.93  # the largest share that keeps the target, within bisection steps
    assert torch.equal(scaled[1], delta[1])
    ratio = scaled[0] / delta[0]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # along its own direction


def test_perceptual_projection_applies_both_constraints():
    torch.manual_seed(0)
    clean, mask = torch.rand(1, 3, 32, 32) * 0.5 + 0.25, torch.ones(1, 1, 32, 32)
    project = perceptual_projection(mask, torch.full((1, 1, 32, 32), 0.01), 0.95)
    out = project(clean, 0.1 * torch.randn_like(clean), torch.arange(1))
    assert split_chroma(out)[1].abs().max() <= 0.01 + 1e-6
    assert face_ssim(clean, clean + out, mask).item() >= 0.95


def test_perceptual_projection_takes_the_bounds_of_the_faces_it_is_given():
    """The refinement drops faces from its batch: ``index`` says which of the projection's faces these are."""
    torch.manual_seed(0)
    clean, mask = torch.rand(2, 3, 32, 32) * 0.5 + 0.25, torch.ones(2, 1, 32, 32)
    bounds = torch.stack([torch.full((1, 32, 32), 0.05), torch.full((1, 32, 32), 0.01)])
    project = perceptual_projection(mask, bounds, None)
    delta = 0.1 * torch.randn(1, 3, 32, 32)
    second = project(clean[1:], delta, torch.tensor([1]))  # the second face alone: its own, tighter bound
    first = project(clean[:1], delta, torch.tensor([0]))
    assert split_chroma(second)[1].abs().max() <= 0.01 + 1e-6
    assert split_chroma(first)[1].abs().max() > 0.01 + 1e-6


def test_smooth_pixels_are_the_flat_share_of_the_mask():
    image, mask = _half_textured(), torch.ones(1, 1, 32, 32)
    smooth = smooth_pixels(image, mask, share=0.4)
    assert smooth.shape == (1, 32, 32)
    assert smooth[0, :, 22:].sum() == 0 and smooth[0, :, :10].all()


def test_ciede2000_matches_sharma_reference_pairs():
    # Sharma, Wu & Dalal (2005), Table 1: pairs 1, 4, 7, 17 and 21
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0),
             ((50, 0, 0), (50, -1, 2), 2.3669), ((50, 2.5, 0), (73, 25, -18), 27.1492),
             ((50, 2.5, 0), (50, 3.1736, 0.5854), 1.0)]
    lab = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)
    for a, b, expected in pairs:
        assert ciede2000(lab(a), lab(b)).item() == pytest.approx(expected, abs=1e-4)
    assert ciede2000(lab((60, 10, 10)), lab((60, 10, 10))).item() == 0


def test_skin_delta_e_sees_colour_on_smooth_skin_only():
    image, mask = _half_textured(), torch.ones(1, 1, 32, 32)
    tinted = image.clone()
    tinted[:, 0, :, :16] += 0.03  # a red patch on the flat half
    in_texture = image.clone()
    in_texture[:, 0, :, 16:] += 0.03
    assert skin_delta_e(image, tinted, mask).item() > 1.0
    assert skin_delta_e(image, in_texture, mask).item() < 1e-3


def test_texture_ratio_tells_where_the_change_went():
    image, mask = _half_textured(), torch.ones(1, 1, 32, 32)
    smooth_only = image.clone()
    smooth_only[..., :16] += 0.02
    texture_only = image.clone()
    texture_only[..., 16:] += 0.02
    assert texture_ratio(image, smooth_only, mask) > 2
    assert texture_ratio(image, texture_only, mask) < 0.5
    assert torch.isnan(texture_ratio(image, image, mask)).all()


def test_colour_bound_is_zero_on_skin_grain_and_large_in_texture():
    image = _half_textured()
    image[..., :16] += 0.01 * torch.randn(1, 3, 32, 16)  # grain of a few grey levels on the flat half
    colour = colour_bound(image, scale=1.0, ceiling=24 / 255, floor=6.0)
    assert colour[..., :10].max() == 0  # no texture to hide a change of colour
    assert colour[..., 22:].min() > 0.05
    assert (colour <= 24 / 255).all()


def test_face_ssim_along_a_change_equals_face_ssim_of_the_scaled_change():
    torch.manual_seed(3)
    clean = torch.rand(3, 3, 40, 40) * 0.6 + 0.2
    delta = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1) - clean
    mask = torch.zeros(3, 1, 40, 40)
    mask[0, :, 5:30, 8:35], mask[1, :, 10:40, 0:20], mask[2] = 1, 1, 1  # boxes of different sizes
    along = face_ssim_along(clean, delta, mask)
    for share in (1.0, 0.6, 0.1):
        shares = torch.tensor([share, share / 2, share])
        direct = face_ssim(clean, clean + shares.view(-1, 1, 1, 1) * delta, mask)
        assert torch.allclose(along(shares), direct, atol=1e-5)
    kept = CleanFaces.of(clean, mask)  # the clean faces' moments taken once, as the refinement keeps them
    shares = torch.tensor([0.7, 0.3, 1.0])
    assert torch.allclose(face_ssim_along(clean, delta, mask, kept)(shares), along(shares), atol=1e-5)
    index = torch.tensor([2, 0])
    assert torch.allclose(face_ssim_along(clean[index], delta[index], mask[index], kept[index])(shares[index]),
                          along(shares)[index], atol=1e-5)
