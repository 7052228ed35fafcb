import numpy as np
import pytest
import torch

from invisible_face.method.regions import (
    CENTER_POINTS,
    anneal,
    candidate_rects,
    clean_log_probs,
    rect_masks,
    score_rects,
    select_region,
)
from invisible_face.models.networks import build_classifier

CFG = dict(t_max=10.0, t_min=0.1, k=0.95, theta_m=1.0, theta_s=1.0, restarts=2, score_batch=8)


def face_points(seed: int, size: int = 96) -> np.ndarray:
    """A plausible 68-point layout: the mean-ish iBUG face scaled into the image, jittered."""
    rng = np.random.default_rng(seed)
    jaw = np.stack([np.linspace(0.15, 0.85, 17), 0.45 + 0.4 * np.sin(np.linspace(0, np.pi, 17))], 1)
    brows = np.stack([np.linspace(0.22, 0.78, 10), np.full(10, 0.35)], 1)
    nose = np.concatenate([np.stack([np.full(4, 0.5), np.linspace(0.4, 0.58, 4)], 1),
                           np.stack([np.linspace(0.42, 0.58, 5), np.full(5, 0.62)], 1)])
    eyes = np.stack([np.concatenate([np.linspace(0.28, 0.42, 6), np.linspace(0.58, 0.72, 6)]), np.full(12, 0.42)], 1)
    mouth = np.stack([np.linspace(0.36, 0.64, 20), 0.75 + 0.03 * np.sin(np.linspace(0, 4 * np.pi, 20))], 1)
    pts = np.concatenate([jaw, brows, nose, eyes, mouth]) * size
    return (pts + rng.normal(0, 1.0, pts.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("resnet18", {"gender": 2, "age_bin": 5, "race": 5}, input_size=32).eval()


def test_rect_masks_cover_exactly_the_rectangle():
    masks = rect_masks(torch.tensor([[2.0, 3.0, 7.0, 5.0], [0.0, 0.0, 10.0, 8.0]]), 8, 10)
    assert masks.shape == (2, 1, 8, 10)
    assert masks[0].sum() == 5 * 2 and masks[1].sum() == 80
    assert masks[0, 0, 3, 2] == 1 and masks[0, 0, 5, 2] == 0 and masks[0, 0, 3, 7] == 0


def test_candidates_are_symmetric_about_the_centre_and_inside():
    pts = face_points(0)
    center = pts[30]
    rects = candidate_rects(pts, center, 96, 96)
    assert rects.shape == (68, 4)
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= 96).all() and (rects[:, 3] <= 96).all()
    assert (rects[:, 0] <= rects[:, 2]).all() and (rects[:, 1] <= rects[:, 3]).all()
    unclipped = (rects[:, :2] > 0).all(1) & (rects[:, 2:] < 96).all(1)
    mid = (rects[unclipped, :2] + rects[unclipped, 2:]) / 2
    np.testing.assert_allclose(mid, np.broadcast_to(center, mid.shape), atol=1e-4)


def test_anneal_keeps_the_best_visited_candidate():
    pts = np.stack([np.arange(10.0), np.arange(10.0)], 1)  # all above-left of the centre
    values = [5.0, 4.0, 3.0, 9.0, 1.0, 2.0, 8.0, 7.0, 6.0, 0.5]
    best, trajectory = anneal(lambda i: values[i], pts, np.array([20.0, 20.0]), 10.0, 0.1, 0.95,
                              np.random.default_rng(0))
    assert values[best] == min(values[: len(trajectory)])
    assert trajectory[0] == 5.0


def test_region_is_inside_the_image_and_around_the_landmarks(model):
    image = torch.rand(3, 96, 96)
    pts = face_points(1)
    region = select_region(model, image, pts, CFG, np.random.default_rng(0))
    x0, y0, x1, y1 = region.rect
    assert 0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 96
    assert x0 <= region.center[0] <= x1 and y0 <= region.center[1] <= y1
    # the centre is one of the eye / nose / mouth landmarks
    assert np.isclose(pts[CENTER_POINTS], region.center, atol=1e-4).all(1).any()
    assert region.area == pytest.approx((x1 - x0) * (y1 - y0) / 96**2, rel=1e-5)
    assert 1 <= region.scored <= 2 * 68


def test_region_search_is_deterministic_under_a_seed(model):
    image, pts = torch.rand(3, 96, 96), face_points(2)
    a = select_region(model, image, pts, CFG, np.random.default_rng(7))
    b = select_region(model, image, pts, CFG, np.random.default_rng(7))
    assert a.rect == b.rect and a.trajectory == b.trajectory


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_smaller_area_weight_never_gives_a_smaller_region(model, seed):
    image, pts = torch.rand(3, 96, 96), face_points(seed)
    areas = [select_region(model, image, pts, {**CFG, "theta_s": t}, np.random.default_rng(seed)).area
             for t in (0.0, 0.01, 0.1, 1.0, 10.0)]
    assert all(a >= b - 1e-9 for a, b in zip(areas, areas[1:])), areas


def test_batched_scoring_equals_one_at_a_time(model):
    image = torch.rand(3, 96, 96)
    rects = torch.from_numpy(candidate_rects(face_points(6), face_points(6)[33], 96, 96)[:10])
    batched, area = score_rects(model, image, rects)
    single, _ = score_rects(model, image, rects, chunk=1)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert (batched >= -1e-6).all() and area.shape == (10,)


def test_given_clean_log_probs_change_nothing(model):
    """The protector hands the search the clean call it already made: same region as computing it."""
    torch.manual_seed(1)
    image, pts = torch.rand(3, 96, 96), face_points(5)
    clean = clean_log_probs(model, image)
    assert set(clean) == {"gender", "age_bin", "race"} and clean["race"].shape == (1, 5)
    a = select_region(model, image, pts, CFG, np.random.default_rng(3))
    b = select_region(model, image, pts, CFG, np.random.default_rng(3), clean=clean)
    assert a.rect == b.rect and a.objective == pytest.approx(b.objective)
