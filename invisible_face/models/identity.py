"""Identity kept? dlib's face-recognition embeddings (shipped in face-recognition-models) before
and after protection; a distance under 0.6 is dlib's "same person" threshold (docs/design.md, "Metrics")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from invisible_face.data.landmarks import face_recognition_models_dir

SAME_PERSON = 0.6


class IdentityEmbedder:
    """128-d dlib ResNet embeddings of the face in a box (5-point alignment)."""

    def __init__(self) -> None:
        import dlib

        models = face_recognition_models_dir()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """RGB uint8 H x W x 3 and a face box (x0, y0, x1, y1) -> 128 floats."""
        import dlib

        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._shape(np.ascontiguousarray(image), rect)
        return np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(image), shape))

    def embed_batch(self, images: Sequence[np.ndarray], boxes: Sequence[tuple[float, float, float, float]],
                    progress: bool | None = None) -> np.ndarray:
        """N RGB uint8 H x W x 3 images and a face box each -> N x 128 float32 (``embed`` per image,
        about 70 ms each on one core). ``progress``: a tqdm bar; None = when N > 100."""
        out = np.zeros((len(images), 128), np.float32)
        bar = tqdm(zip(images, boxes), total=len(images), desc="dlib embeddings", unit="chip",
                   disable=not (len(images) > 100 if progress is None else progress), mininterval=10)
        for i, (image, box) in enumerate(bar):
            out[i] = self.embed(image, box)
        return out
