import numpy as np
import torch
from PIL import Image

from invisible_face.evaluate.budgets import (
    budget_frontier_figure,
    budget_frontier_metrics,
    budget_frontier_table,
    budget_override,
    point_name,
    region_boxes,
    region_crops,
)


def _points(size: int = 200) -> np.ndarray:
    """68 landmarks of a face centred in a ``size`` px chip (the iBUG layout's rough positions)."""
    p = np.zeros((68, 2), dtype=np.float32)
    p[0:17] = np.stack([np.linspace(50, 150, 17), 100 + 50 * np.sin(np.linspace(0, np.pi, 17))], 1)  # jaw
    p[17:27] = np.stack([np.linspace(60, 140, 10), np.full(10, 80)], 1)  # brows
    p[27:36] = np.stack([np.full(9, 100), np.linspace(85, 125, 9)], 1)  # nose
    p[36:48] = np.stack([np.linspace(65, 135, 12), np.full(12, 92)], 1)  # eyes
    p[48:68] = np.stack([np.linspace(80, 120, 20), np.full(20, 150)], 1)  # mouth
    return p * size / 200


def test_uniform_points_drop_the_colour_bound_and_names_say_budget_and_target():
    assert point_name("perceptual", 0.95) == "invisible_face_perceptual_ssim95"
    assert budget_override("uniform", 0.93) == {"visibility": {"budget": "uniform", "face_ssim": 0.93,
                                                               "chroma_share": None}}
    assert "chroma_share" not in budget_override("perceptual", 0.97)["visibility"]


def test_frontier_table_and_metrics_hold_every_point_that_ran(tmp_path):
    row = lambda s, kb: {"face_ssim": s, "ssim": s + 0.01, "face_psnr": 33.0, "texture_ratio": 0.5,
                         "skin_delta_e": 0.8, "known_backbone_fooled_mean": kb, "mosr": 0.7,
                         "zoo_fooled_mean": 0.09, "identity_kept": 0.8, "ms_per_image": 900.0}
    results = {"a": row(0.93, 0.9), "b": row(0.95, 0.8), "c": row(0.951, 0.92)}
    points = {("uniform", 0.93): "a", ("uniform", 0.95): "b", ("perceptual", 0.95): "c", ("perceptual", 0.97): "gone"}
    table = budget_frontier_table(results, points)
    assert len(table) == 3 and set(table["budget"]) == {"uniform", "perceptual"}
    metrics = budget_frontier_metrics(table)
    assert metrics["frontier_perceptual_ssim95_known_backbone_fooled_mean"] == 0.92
    assert metrics["frontier_uniform_ssim93_ms_per_face"] == 900.0
    assert not any("ssim97" in k for k in metrics)
    budget_frontier_figure(table, tmp_path / "f.png")
    assert Image.open(tmp_path / "f.png").size[0] > 500


def test_region_boxes_are_inside_the_chip_and_hair_is_the_textured_window_above_the_eyes():
    image = torch.full((3, 200, 200), 0.6)
    image[:, 8:48, 140:180] = (torch.arange(40)[:, None] + torch.arange(40)[None]) % 2  # "hair": top right
    image[:, 150:190, 20:60] = (torch.arange(40)[:, None] + torch.arange(40)[None]) % 2  # texture under the eyes
    boxes = region_boxes(image, _points(), 40)
    for x0, y0, x1, y1 in boxes.values():
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200 and x1 - x0 == 40 == y1 - y0
    assert boxes["forehead"][1] < boxes["cheek"][1]
    x0, y0, _, y1 = boxes["hair"]
    assert y1 <= 92 - 40 + 4 and 120 <= x0 <= 160 and y0 <= 24  # on the textured patch, above the eyes


def test_region_crops_draw_every_face_region_and_version_at_2x(tmp_path):
    clean = torch.rand(2, 3, 200, 200)
    region_crops(clean, {"light": clean, "strong": 1 - clean}, np.stack([_points(), _points()]), tmp_path / "r.png")
    width, height = Image.open(tmp_path / "r.png").size
    assert width == 3 * (80 + 4) + 4 and height == 6 * (80 + 4) + 4  # 3 columns, 2 faces x 3 regions
