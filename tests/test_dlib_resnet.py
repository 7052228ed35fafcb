"""dlib's face-recognition ResNet in PyTorch and the differentiable face chip, against dlib itself on
real UTKFace chips: the same embedding, the same chip, a gradient that reaches the photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invisible_face.data.landmarks import face_recognition_models_dir
from invisible_face.models.dlib_resnet import (
    CHIP_PADDING,
    CHIP_SIZE,
    MODEL_FILE,
    load_dlib_face_net,
    read_dlib_face_net,
    shared_dlib_face_net,
)
from invisible_face.models.face_chip import chip_affine, embed_chips, five_points, five_points_batch, warp_to_chip

BOX = (0.075, 0.075, 0.97, 0.97)  # params landmarks.fallback_box


def to_float(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def dlib_models():
    import dlib

    models = face_recognition_models_dir()
    return (dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(models / MODEL_FILE)))


@pytest.fixture(scope="module")
def faces(dlib_models, utkface_dir) -> dict:
    """8 dataset chips spread over the sorted folder, with dlib's shapes, chips and descriptors."""
    import dlib

    files = sorted(utkface_dir.glob("*.jpg"))
    files = files[:: max(1, len(files) // 8)][:8]
    photos = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    predictor, recogniser = dlib_models
    h, w = photos.shape[1:3]
    rect = dlib.rectangle(*(int(round(v)) for v in (BOX[0] * w, BOX[1] * h, BOX[2] * w, BOX[3] * h)))
    shapes = [predictor(p, rect) for p in photos]
    chips = np.stack([dlib.get_face_chip(p, s, CHIP_SIZE, CHIP_PADDING) for p, s in zip(photos, shapes)])
    return {
        "photos": photos,
        "points": np.array([[(q.x, q.y) for q in s.parts()] for s in shapes], dtype=np.float64),
        "chips": chips,
        "chip_desc": np.stack([np.asarray(recogniser.compute_face_descriptor(c)) for c in chips]),
        "photo_desc": np.stack([np.asarray(recogniser.compute_face_descriptor(p, s)) for p, s in zip(photos, shapes)]),
    }


@pytest.fixture(scope="module")
def net():
    return load_dlib_face_net()


def test_loader(net):
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    # dlib's 5,614,592 parameters less the 7,104 of the affine layers folded into the convolutions
    assert net.num_params == 5_614_592 - 7_104
    assert torch.allclose(net.mean.flatten(), torch.tensor([122.782, 117.001, 104.298]))
    assert shared_dlib_face_net() is shared_dlib_face_net()
    with pytest.raises(ValueError, match="150 x 150"):
        net(torch.zeros(1, 3, 200, 200))


def test_parity_on_dlib_chips(net, faces):
    with torch.no_grad():
        ours = net(to_float(faces["chips"])).double().numpy()
    ref = faces["chip_desc"]
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"parity: min cosine {cos.min():.9f}, max abs diff {np.abs(ours - ref).max():.2e}")
    assert (cos >= 0.99999).all()
    assert np.abs(ours - ref).max(axis=1).max() <= 1e-4
    # dlib returns the fc output as it is, not L2-normalised
    assert (np.linalg.norm(ref, axis=1) > 1.1).all()


def test_five_points_match_dlib(faces):
    np.testing.assert_array_equal(five_points_batch(to_float(faces["photos"]), BOX), faces["points"])
    h, w = faces["photos"].shape[1:3]
    box = (BOX[0] * w, BOX[1] * h, BOX[2] * w, BOX[3] * h)
    np.testing.assert_array_equal(five_points(faces["photos"][0], box), faces["points"][0])


def test_alignment_matches_get_face_chip(faces):
    affine = chip_affine(faces["points"])
    chips = warp_to_chip(to_float(faces["photos"]), affine)
    assert chips.shape == (8, 3, CHIP_SIZE, CHIP_SIZE) and chips.dtype == torch.float32
    ref = faces["chips"].astype(np.float64)
    mad = np.abs(chips.permute(0, 2, 3, 1).double().numpy() * 255 - ref).mean(axis=(1, 2, 3))
    # dlib truncates its bilinear values to integers; truncated too (in float64, where values that
    # are whole numbers stay whole), the chips are the same pixel for pixel
    photos = torch.from_numpy(faces["photos"]).permute(0, 3, 1, 2).double() / 255
    exact = warp_to_chip(photos, affine).permute(0, 2, 3, 1).numpy() * 255
    same = (np.floor(exact + 1e-6) == ref).mean()
    print(f"alignment: mean abs diff {mad.mean():.3f} (max {mad.max():.3f}) grey levels, "
          f"{same:.6f} identical truncated")
    assert mad.max() <= 2.0 and same >= 0.9999


def test_end_to_end_embedding(net, faces):
    with torch.no_grad():
        emb = embed_chips(net, to_float(faces["photos"]), chip_affine(faces["points"])).double().numpy()
    dist = np.linalg.norm(emb - faces["photo_desc"], axis=1)
    print(f"end to end: distance to dlib's descriptor of the photo, mean {dist.mean():.4f}, max {dist.max():.4f}")
    assert dist.max() < 0.05  # dlib's same-person threshold is 0.6


def test_gradient_reaches_the_photo(net, faces):
    photos = to_float(faces["photos"][:2]).requires_grad_(True)
    emb = embed_chips(net, photos, chip_affine(faces["points"][:2]))
    (emb * torch.randn(128, generator=torch.Generator().manual_seed(0))).sum().backward()
    grad = photos.grad
    assert torch.isfinite(grad).all()
    face = grad[:, :, 60:140, 60:140].abs().flatten(1)
    assert (face.mean(1) > 0).all() and ((face > 0).float().mean(1) > 0.9).all()


def test_large_face_through_the_pyramid(net, dlib_models, faces):
    """A face over twice the chip's size (a chip upscaled 3x): dlib samples it from its image
    pyramid, and so does warp_to_chip."""
    import dlib

    image = np.asarray(Image.fromarray(faces["photos"][0]).resize((600, 600), Image.BICUBIC))
    box = tuple(v * 600 for v in BOX)
    predictor, recogniser = dlib_models
    shape = predictor(image, dlib.rectangle(*(int(round(v)) for v in box)))
    ref_chip = dlib.get_face_chip(image, shape, CHIP_SIZE, CHIP_PADDING).astype(np.float64)
    ref = np.asarray(recogniser.compute_face_descriptor(image, shape))
    affine = chip_affine(five_points(image, box)[None])
    assert affine[0, :, :2].det().sqrt() > 4  # two pyramid levels
    with torch.no_grad():
        chip = warp_to_chip(to_float(image[None]), affine)
        plain = warp_to_chip(to_float(image[None]), affine, pyramid=False)
        dist, plain_dist = (float(np.linalg.norm(net(c)[0].numpy() - ref)) for c in (chip, plain))
    mad = np.abs(chip[0].permute(1, 2, 0).numpy() * 255 - ref_chip).mean()
    print(f"pyramid: chip mean abs diff {mad:.2f}, distance {dist:.4f} (without the pyramid {plain_dist:.4f})")
    assert mad <= 2.0 and dist < min(0.02, plain_dist)


def test_parser_rejects_damaged_files(tmp_path: Path):
    data = (face_recognition_models_dir() / MODEL_FILE).read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_dlib_face_net(truncated)
    # a tag where a layer was: the wrappers' versions no longer spell dlib's anet_type
    first_wrapper = data.index(b"\x01\x02", 20)
    wrong = tmp_path / "wrong.dat"
    wrong.write_bytes(data[:first_wrapper] + b"\x01\x07" + data[first_wrapper + 2:])
    with pytest.raises(ValueError, match="anet_type"):
        read_dlib_face_net(wrong)
    extra = tmp_path / "extra.dat"
    extra.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="left over"):
        read_dlib_face_net(extra)
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="not a dlib face-recognition ResNet file"):
        read_dlib_face_net(garbage)
