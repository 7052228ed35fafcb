"""The embedding adversary: attribute heads on dlib's pretrained 128-D face-recognition embedding.

It stands in for a commercial attribute API, the adversary the product exists to defeat. A target
only: trained in the classifiers stage on split target_train and scored by the evaluation. The
defender never computes gradients through it, never queries it while protecting and never trains on
its outputs (tests/test_embedding_adversary.py checks that protection never calls it).

chip (N x 3 x H x W) -> box = fractions of the chip (params landmarks.fallback_box) -> 5 points ->
dlib ResNet -> N x 128 -> standardised -> a linear (or one-hidden-layer) head per attribute.
Saved as ``<name>.safetensors`` (tensors) + ``<name>.json`` (config): loading unpickles nothing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invisible_face.data.images import to_uint8
from invisible_face.models.face_backbone import EmbeddingHeads, read_saved, save_safetensors
from invisible_face.models.identity import IdentityEmbedder

ARCH = "dlib_resnet_embedding"


@lru_cache(maxsize=1)
def _embedder() -> IdentityEmbedder:
    """One embedder per process: loading the dlib models takes a while."""
    return IdentityEmbedder()


def chip_embeddings(images: torch.Tensor | np.ndarray, box_fractions: tuple[float, ...] | list[float],
                    progress: bool | None = None) -> np.ndarray:
    """Aligned chips N x 3 x H x W (uint8, or float in [0, 1]) -> N x 128 float32 dlib embeddings.

    The face box is ``box_fractions`` (x0, y0, x1, y1) of the chip's width and height, no detection:
    every chip of an aligned set is embedded the same way (about 70 ms a chip on one core)."""
    x = torch.as_tensor(images)
    chips = to_uint8(x.float() / 255 if x.dtype == torch.uint8 else x)
    h, w = chips.shape[1:3]
    x0, y0, x1, y1 = box_fractions
    box = (x0 * w, y0 * h, x1 * w, y1 * h)
    return _embedder().embed_batch(list(chips), [box] * len(chips), progress)


class EmbeddingAdversary(EmbeddingHeads):
    """The adversary's heads (:class:`invisible_face.models.face_backbone.EmbeddingHeads`) on dlib's own
    embeddings, with their file format.

    forward(emb: N x 128) -> {attribute: N x n_classes logits}
    """

    def predict_images(self, images: torch.Tensor | np.ndarray, box_fractions: tuple[float, ...] | list[float],
                       progress: bool | None = None) -> dict[str, torch.Tensor]:
        """Chips N x 3 x H x W (see ``chip_embeddings``) -> {attribute: N int64 predicted classes}."""
        return self.predict_embeddings(chip_embeddings(images, box_fractions, progress))

    def config(self) -> dict[str, Any]:
        return {"arch": ARCH, "attributes": self.attributes, "hidden": self.hidden}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``<path stem>.safetensors`` (tensors) and ``<path stem>.json`` (config + ``extra``);
        ``path`` as given by ``classifiers.classifier_path(name)``. -> the .safetensors path."""
        return save_safetensors(self, path, {**self.config(), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingAdversary":
        """Rebuild a saved adversary (any of ``<stem>``, ``<stem>.pt``, ``.json``, ``.safetensors``), in eval mode."""
        cfg, state = read_saved(path, ARCH)
        model = cls(cfg["attributes"], cfg.get("hidden", 0))
        model.load_state_dict(state)
        return model.eval()
