"""Face detection and 68-point landmarks (iBUG-68 layout) behind one interface.

Two backends, chosen by ``landmarks.backend`` in params (docs/design.md, "Pretrained parts and fallbacks"):

- ``fan``: face-alignment's FAN, used only when its weights are already in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``): nothing is downloaded at run time.
- ``dlib``: dlib's 68-point shape predictor shipped inside ``face-recognition-models``.

Both detect faces with dlib's HOG detector (no weights needed), so a detection score means the
same thing whichever backend drew the points. The protector and the Serve app reuse
``backend.detect(image)`` on in-the-wild photos; the landmarks stage calls ``backend.chip``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

FAN_WEIGHTS = "2DFAN4-11f355bf06.pth.tar"  # the file name face-alignment's loader looks for


@dataclass
class Face:
    """One detected face: ``box`` is (x0, y0, x1, y1) in pixels, ``points`` is (68, 2) as (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray
    detected: bool = True  # False when the box is the configured fallback for an aligned chip


def face_recognition_models_dir() -> Path:
    """The ``models/`` folder of face-recognition-models, found without importing the package
    (its ``__init__`` imports ``pkg_resources``, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed: pip install face-recognition-models")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def fan_weights_path() -> Path:
    """Where face-alignment looks for FAN's weights (torch hub cache, honouring TORCH_HOME)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / FAN_WEIGHTS


class LandmarkBackend(Protocol):
    name: str

    def detect(self, image: np.ndarray, upsample: int | None = None) -> list[Face]:
        """All faces in an RGB uint8 (H, W, 3) image, best score first (``upsample``: the
        detector's, default the backend's own)."""

    def chip(self, image: np.ndarray, fallback_box: tuple[float, float, float, float], upsample: int = 0) -> Face:
        """The one face of an aligned chip; ``fallback_box`` (fractions of W, H) if none is found.
        The face fills a chip, so the detector needs no upsampling (1 is about 4x slower)."""


class _HogDetectorMixin:
    """dlib HOG detection shared by both backends; subclasses implement ``points_for``."""

    name = "base"

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()

    def points_for(self, image: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[np.ndarray]:
        raise NotImplementedError

    def detect(self, image: np.ndarray, upsample: int | None = None) -> list[Face]:
        image = np.ascontiguousarray(image)
        rects, scores, _ = self._detector.run(image, self.upsample if upsample is None else upsample, 0.0)
        order = np.argsort(scores)[::-1]
        boxes = [(float(rects[i].left()), float(rects[i].top()), float(rects[i].right()), float(rects[i].bottom()))
                 for i in order]
        points = self.points_for(image, boxes) if boxes else []
        return [Face(b, float(scores[i]), p) for b, i, p in zip(boxes, order, points)]

    def chip(self, image: np.ndarray, fallback_box: tuple[float, float, float, float], upsample: int = 0) -> Face:
        faces = self.detect(image, upsample)
        if faces:
            return faces[0]
        h, w = image.shape[:2]
        box = (fallback_box[0] * w, fallback_box[1] * h, fallback_box[2] * w, fallback_box[3] * h)
        return Face(box, 0.0, self.points_for(np.ascontiguousarray(image), [box])[0], detected=False)


class DlibBackend(_HogDetectorMixin):
    """dlib HOG detector + 68-point shape predictor from face-recognition-models."""

    name = "dlib"

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        super().__init__(upsample)
        model = face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
        self._predictor = dlib.shape_predictor(str(model))

    def points_for(self, image, boxes):
        import dlib

        out = []
        for x0, y0, x1, y1 in boxes:
            shape = self._predictor(image, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
            out.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32))
        return out


class FanBackend(_HogDetectorMixin):
    """dlib HOG detector + face-alignment's FAN (2D, 68 points) on the boxes it found."""

    name = "fan"

    def __init__(self, upsample: int = 1, device: str = "cpu") -> None:
        import face_alignment

        super().__init__(upsample)
        if not fan_weights_path().exists():
            raise FileNotFoundError(f"FAN weights not in the torch hub cache: {fan_weights_path()}")
        # 'folder' builds no detector network (we pass boxes); compile=False: torch.compile on a
        # CPU costs minutes of start-up for no gain here.
        self._fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, flip_input=False,
            face_detector="folder", compile=False,
        )

    def points_for(self, image, boxes):
        preds = self._fa.get_landmarks_from_image(image, detected_faces=[np.array(b) for b in boxes])
        return [np.asarray(p, dtype=np.float32)[:, :2] for p in preds]


def make_backend(kind: str = "auto", upsample: int = 1, device: str = "cpu") -> LandmarkBackend:
    """``auto`` picks FAN when its weights are cached (torch hub), otherwise dlib."""
    if kind == "auto":
        kind = "fan" if fan_weights_path().exists() else "dlib"
    if kind == "fan":
        return FanBackend(upsample, device=device)
    if kind == "dlib":
        return DlibBackend(upsample)
    raise ValueError(f"unknown landmark backend {kind!r}: use auto, fan or dlib")
