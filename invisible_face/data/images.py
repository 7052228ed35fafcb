"""Photo pixels <-> the networks' tensors: the one conversion each way, used on every floor (the chip
embedders in ``models``, recompression in ``method``, the protector and the evaluation above them).

Photos are H x W x 3 uint8 arrays (N x H x W x 3 for a batch); the networks take 3 x H x W float
tensors in [0, 1] (N x 3 x H x W).
"""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 (or N x H x W x 3) -> 3 x H x W float in [0, 1] (or N x 3 x H x W), a copy:
    read-only arrays are fine. The one conversion from photo pixels to the networks' layout."""
    return torch.tensor(image).movedim(-1, -3).float() / 255


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """3 x H x W in [0, 1] (or N x 3 x H x W) -> H x W x 3 uint8 (or N x H x W x 3), rounded so that
    +-epsilon survives quantisation. The inverse of :func:`to_tensor`."""
    return (image.detach().clamp(0, 1) * 255).round().byte().movedim(-3, -1).contiguous().numpy()
