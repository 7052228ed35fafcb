"""dlib's face chip as a differentiable warp: a gradient on the 150 px chip reaches the photo's pixels.

dlib aligns a face for its ResNet with ``get_face_chip_details(shape, 150, 0.25)`` (a similarity
from its mean 5-point face to the detected points) and ``extract_image_chip`` (bilinear sampling,
black outside the image). Here the same transform is a 2 x 3 matrix from chip pixel coordinates to
photo pixel coordinates (both with pixel centres at integers, dlib's convention) and the sampling is
``grid_sample``; the 5 points come from dlib's shape predictor on the clean photo and are held fixed.

photo (N x 3 x H x W) + points (N x 5 x 2) -> chip_affine -> N x 2 x 3 -> warp_to_chip -> N x 3 x 150 x 150
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from invisible_face.data.images import to_uint8
from invisible_face.data.landmarks import face_recognition_models_dir
from invisible_face.models.dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibFaceNet

PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
# dlib's mean face for its 5-point shapes (get_face_chip_details): eye corners, then the nose base
MEAN_FACE_5 = ((0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
               (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
               (0.4901123135679, 0.6277975316475))


@lru_cache(maxsize=1)
def _predictor():
    import dlib

    return dlib.shape_predictor(str(face_recognition_models_dir() / PREDICTOR_FILE))


def five_points(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """dlib's 5-point shape of the face in ``box`` (x0, y0, x1, y1 pixels) of an RGB uint8 H x W x 3
    image -> (5, 2) float64 (x, y). The box is rounded as IdentityEmbedder rounds it."""
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = _predictor()(np.ascontiguousarray(image), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def five_points_batch(images: np.ndarray | torch.Tensor, box_fractions: tuple[float, ...] | list[float]) -> np.ndarray:
    """Aligned chips N x 3 x H x W (uint8, or float in [0, 1]) with the face at ``box_fractions``
    (params ``landmarks.fallback_box``) -> N x 5 x 2 float64, as ``chip_embeddings`` finds them."""
    x = torch.as_tensor(images)
    chips = to_uint8(x.float() / 255 if x.dtype == torch.uint8 else x)
    h, w = chips.shape[1:3]
    x0, y0, x1, y1 = box_fractions
    box = (x0 * w, y0 * h, x1 * w, y1 * h)
    return np.stack([five_points(c, box) for c in chips]) if len(chips) else np.zeros((0, 5, 2))


def chip_affine(points: np.ndarray | torch.Tensor, size: int = CHIP_SIZE,
                padding: float = CHIP_PADDING) -> torch.Tensor:
    """dlib's face-chip transform for 5-point shapes (..., 5, 2) -> (..., 2, 3) float64 mapping chip
    pixel (x, y, 1) to photo pixel coordinates. Differentiable in ``points`` when they are a tensor."""
    to = torch.as_tensor(points, dtype=torch.float64)
    if to.shape[-2:] != (5, 2):
        raise ValueError(f"points must be (..., 5, 2), got {tuple(to.shape)}")
    src = (padding + torch.tensor(MEAN_FACE_5, dtype=torch.float64)) / (2 * padding + 1) * size
    # find_similarity_transform (Umeyama): for 2-D points its least-squares similarity is the
    # complex ratio z = sum(conj(a) b) / sum |a|^2 of the centred point sets
    a, b = src - src.mean(0), to - to.mean(-2, keepdim=True)
    norm = (a ** 2).sum()
    p = (a[:, 0] * b[..., 0] + a[:, 1] * b[..., 1]).sum(-1) / norm  # scale * cos(angle)
    q = (a[:, 0] * b[..., 1] - a[:, 1] * b[..., 0]).sum(-1) / norm  # scale * sin(angle)
    scale = torch.hypot(p, q)
    u = size / 2 - src.mean(0)
    centre = torch.stack([p * u[0] - q * u[1], q * u[0] + p * u[1]], -1) + to.mean(-2)
    # chip_details keeps a rect of side size * scale around that centre (centered_drect: corner to
    # corner size * scale - 1) and extract_image_chip maps chip pixels 0 and size - 1 onto its corners
    step = (size * scale - 1) / ((size - 1) * scale)
    m = torch.stack([torch.stack([p, -q], -1), torch.stack([q, p], -1)], -2) * step[..., None, None]
    t = centre - (m @ torch.full((2, 1), (size - 1) / 2, dtype=torch.float64)).squeeze(-1)
    return torch.cat([m, t[..., None]], -1)


def _pyramid_levels(side: float, size: int) -> int:
    """How many pyramid_down<2> levels extract_image_chips samples from, for a chip rect of ``side`` px."""
    levels = 0
    while (side + 1) / 2 > size:
        side, levels = (side + 1) / 2, levels + 1
    return levels


def _sample(images: torch.Tensor, affine: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear sampling at ``affine`` (chip -> image pixels), black where dlib's
    interpolate_bilinear is: unless all four neighbours lie inside the image."""
    h, w = images.shape[2:]
    r = torch.arange(size, dtype=images.dtype, device=images.device)
    pix = torch.stack([r.expand(size, size), r[:, None].expand(size, size), torch.ones_like(r).expand(size, size)], -1)
    xy = torch.einsum("hwk,njk->nhwj", pix, affine)  # N x size x size x (x, y)
    grid = torch.stack([xy[..., 0] * (2 / (w - 1)) - 1, xy[..., 1] * (2 / (h - 1)) - 1], -1)
    chips = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] < h - 1)
    return chips * inside[:, None].to(chips.dtype)


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _pyramid_sample(image: torch.Tensor, affine: torch.Tensor, size: int, levels: int) -> torch.Tensor:
    """extract_image_chips for a face ``levels`` pyramid levels larger than the chip: 3 x H x W ->
    3 x size x size, as dlib builds and samples its pyramid (less its rounding to integers)."""
    h, w = image.shape[1:]
    corners = torch.tensor([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]],
                           dtype=affine.dtype, device=affine.device) @ affine.T
    grow = 2.0
    for _ in range(levels):
        grow = grow * 2 + 2
    # the pyramid covers the chip's corners grown by that margin (rounded as dlib's drectangle -> rectangle)
    lo = [int(np.floor(max(0.0, v - grow) + 0.5)) for v in corners.min(0).values.tolist()]
    hi = [int(np.floor(min(m - 1.0, v + grow) + 0.5)) for v, m in zip(corners.max(0).values.tolist(), (w, h))]
    x = image[None, :, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    k = torch.outer(_BINOMIAL, _BINOMIAL).to(x) / 256
    a, t = affine[:2, :2], affine[:2, 2] - torch.tensor(lo, dtype=affine.dtype, device=affine.device)
    for _ in range(levels):
        x = F.conv2d(x, k.expand(3, 1, 5, 5), stride=2, groups=3)  # pyramid_down_2_1: level(p) = 2 p + 2
        # but its point_down maps p to p / 2 - (1.25, 0.75), so dlib samples each level off by that
        a, t = a / 2, t / 2 - torch.tensor([1.25, 0.75], dtype=affine.dtype, device=affine.device)
    return _sample(x, torch.cat([a, t[:, None]], 1)[None], size)[0]


def warp_to_chip(images: torch.Tensor, affine: torch.Tensor, size: int = CHIP_SIZE,
                 pyramid: bool = True) -> torch.Tensor:
    """Photos N x 3 x H x W float + ``chip_affine`` N x 2 x 3 -> chips N x 3 x size x size, bilinear,
    0 where dlib's bilinear sampling leaves the photo. Differentiable in ``images``.

    A face more than about twice the chip's size dlib samples from an image pyramid (5 x 5 binomial
    filter, stride 2, per level); ``pyramid`` does the same, image by image, with the pyramid as a
    strided convolution. Aligned 200 px chips need none (their faces' scale is 1.4 to 1.6)."""
    n = images.shape[0]
    affine = torch.as_tensor(affine, device=images.device).to(images.dtype)
    if affine.shape != (n, 2, 3):
        raise ValueError(f"affine must be {n} x 2 x 3, got {tuple(affine.shape)}")
    step = affine[:, :, :2].det().abs().sqrt().tolist()  # photo pixels per chip pixel
    levels = [_pyramid_levels(s * (size - 1) + 1, size) if pyramid else 0 for s in step]
    if not any(levels):
        return _sample(images, affine, size)
    return torch.stack([_pyramid_sample(im, a, size, k) if k else _sample(im[None], a[None], size)[0]
                        for im, a, k in zip(images, affine, levels)])


def embed_chips(net: DlibFaceNet, images: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Photos N x 3 x H x W in [0, 1] + ``chip_affine`` N x 2 x 3 -> N x 128 dlib embeddings."""
    return net(warp_to_chip(images, affine))
