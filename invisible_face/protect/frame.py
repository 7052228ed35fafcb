"""The working frame: every face is protected at one size, whatever its size in the photo.

A detected face's square crop (framed like the training chips) is resampled to ``frame_size`` x
``frame_size`` px, the size of the chips the networks were trained on; G, the visibility budget,
the refinement and every check run there, so faces from any photos stack into one batch. The change
alone is resampled back to the crop's size and added to the photo: the photo's own pixels are never
resampled. A crop already at the frame size (an aligned 200 px chip) passes through untouched.
"""

from __future__ import annotations

import numpy as np
import torch

from invisible_face.method.ldman import resize


def to_frame(crop: torch.Tensor, size: int) -> torch.Tensor:
    """A face crop in the working frame: bilinear, antialiased when shrinking.
    3 x h x w -> 3 x size x size (the crop itself when it is already that size)."""
    return resize(crop[None], size)[0]


def frame_points(points: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Landmarks of an h x w crop in working-frame pixels. N x 2 (x, y) -> N x 2."""
    return (points * np.array([size / width, size / height], dtype=np.float32)).astype(np.float32)


def from_frame(delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A change made in the working frame, at the crop's own size. 3 x S x S -> 3 x height x width."""
    return resize(delta[None], (height, width))[0]


def box_from_frame(box: tuple[float, ...], height: int, width: int, size: int,
                   offset: tuple[float, float] = (0.0, 0.0)) -> list[float]:
    """A box (x0, y0, x1, y1) in working-frame pixels -> in the photo, for a crop of h x w at ``offset``."""
    sx, sy = width / size, height / size
    return [box[0] * sx + offset[0], box[1] * sy + offset[1], box[2] * sx + offset[0], box[3] * sy + offset[1]]
