import numpy as np
import torch

from invisible_face.protect.frame import box_from_frame, frame_points, from_frame, to_frame


def test_a_crop_at_the_frame_size_passes_untouched():
    crop = torch.rand(3, 200, 200)
    assert torch.equal(to_frame(crop, 200), crop)
    assert torch.equal(from_frame(crop, 200, 200), crop)


def test_any_crop_lands_at_the_frame_size_and_a_change_goes_back_to_the_crop():
    for side in (64, 150, 333):
        frame = to_frame(torch.rand(3, side, side), 200)
        assert frame.shape == (3, 200, 200)
        assert from_frame(frame, side, side).shape == (3, side, side)


def test_a_smooth_change_survives_the_round_trip():
    # the refinement's steps are blurred (3 px at 200): a smooth change resampled to a crop and back
    # is the same change
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 200), torch.linspace(0, 1, 200), indexing="ij")
    change = 0.03 * torch.sin(6 * xs + 4 * ys).expand(3, 200, 200)
    back = to_frame(from_frame(change, 400, 400), 200)
    assert (back - change).abs().max() < 2e-3


def test_points_and_boxes_follow_the_scale():
    points = np.array([[10.0, 20.0], [90.0, 50.0]], dtype=np.float32)
    scaled = frame_points(points, 100, 50, 200)  # h 100, w 50
    assert np.allclose(scaled, [[40.0, 40.0], [360.0, 100.0]])
    assert box_from_frame((20.0, 40.0, 100.0, 200.0), 100, 50, 200, offset=(5.0, 7.0)) == [10.0, 27.0, 30.0, 107.0]
