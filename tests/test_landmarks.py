import numpy as np
import pytest
import torch
from PIL import Image

from invisible_face.data.landmarks import DlibBackend, FanBackend, fan_weights_path, make_backend
from invisible_face.data.synthetic_photos import face_count


@pytest.fixture(scope="module")
def load(photos):
    """name -> RGB uint8 of one of the photos composed from the dataset (conftest ``photos``)."""
    return lambda name: np.asarray(Image.open(photos / name).convert("RGB"))


def points_inside(face, margin: float = 0.25) -> bool:
    x0, y0, x1, y1 = face.box
    w, h = x1 - x0, y1 - y0
    xs, ys = face.points[:, 0], face.points[:, 1]
    return bool(((xs > x0 - margin * w) & (xs < x1 + margin * w)
                 & (ys > y0 - margin * h) & (ys < y1 + margin * h)).all())


@pytest.fixture(scope="module")
def dlib_backend():
    return DlibBackend(upsample=1)


def test_dlib_finds_every_face(dlib_backend, load):
    one = dlib_backend.detect(load("portrait.jpg"))
    two = dlib_backend.detect(load("two_faces.jpg"))  # one upright, one rolled by 15 degrees
    assert len(dlib_backend.detect(load("small_face.jpg"))) == face_count("small_face.jpg") == 1
    assert len(one) == face_count("portrait.jpg") == 1 and len(two) == face_count("two_faces.jpg") == 2
    for face in one + two:
        assert face.points.shape == (68, 2) and face.detected and face.score > 0
        assert points_inside(face, margin=0.3)  # the jaw line runs below the HOG box
    assert two[0].score >= two[1].score


def test_chip_without_a_face_uses_the_fallback_box(dlib_backend):
    blank = np.full((200, 200, 3), 128, np.uint8)
    assert dlib_backend.detect(blank) == []
    face = dlib_backend.chip(blank, (0.1, 0.1, 0.9, 0.9))
    assert not face.detected and face.score == 0.0
    assert face.box == (20.0, 20.0, 180.0, 180.0) and face.points.shape == (68, 2)


@pytest.fixture()
def seeded_torch_hub(tmp_path, monkeypatch):
    """A torch hub cache holding a network of FAN's architecture (random weights, offline)."""
    from face_alignment.models import FAN

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = fan_weights_path()
    assert str(tmp_path) in str(path)
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), path)
    return path


def test_fan_backend_loads_through_face_alignment(seeded_torch_hub, load):
    backend = make_backend("auto")
    assert isinstance(backend, FanBackend) and backend.name == "fan"
    faces = backend.detect(load("portrait.jpg"))
    assert len(faces) == 1 and faces[0].points.shape == (68, 2)
    assert np.isfinite(faces[0].points).all()
    # the network's weights are random, so only the geometry of the crop is checked
    assert points_inside(faces[0], margin=1.0)


def test_auto_falls_back_to_dlib_without_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert make_backend("auto").name == "dlib"
    with pytest.raises(FileNotFoundError, match="FAN weights"):
        make_backend("fan")
