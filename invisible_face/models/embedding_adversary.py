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

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from invisible_face.models.identity import IdentityEmbedder
from invisible_face.protect.photo_io import to_uint8

ARCH = "dlib_resnet_embedding"
DIM = 128  # dlib_face_recognition_resnet_model_v1


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


class EmbeddingAdversary(nn.Module):
    """Standardisation (the training embeddings' mean and std) + one head per attribute.

    forward(emb: N x 128) -> {attribute: N x n_classes logits}
    """

    def __init__(self, attributes: dict[str, int], hidden: int = 0) -> None:
        super().__init__()
        self.attributes, self.hidden = dict(attributes), int(hidden)

        def head(n: int) -> nn.Module:
            if self.hidden <= 0:
                return nn.Linear(DIM, n)
            return nn.Sequential(nn.Linear(DIM, self.hidden), nn.ReLU(), nn.Linear(self.hidden, n))

        self.heads = nn.ModuleDict({a: head(n) for a, n in self.attributes.items()})
        self.register_buffer("mean", torch.zeros(DIM))
        self.register_buffer("std", torch.ones(DIM))

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        z = (emb.float() - self.mean) / self.std
        return {a: head(z) for a, head in self.heads.items()}

    def fit(self, embeddings: np.ndarray | torch.Tensor, labels: dict[str, Any], epochs: int = 200,
            lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
        """Full-batch Adam on N x 128 embeddings and {attribute: N class ids}: the sum over attributes
        of the cross-entropy, ``epochs`` steps from a seeded initialisation. -> loss per step."""
        x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        y = {a: torch.as_tensor(np.asarray(labels[a]), dtype=torch.int64) for a in self.attributes}
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-6))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.heads.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        optimizer = torch.optim.Adam(self.heads.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        losses = []
        for _ in range(epochs):
            logits = self(x)
            loss = sum(F.cross_entropy(logits[a], y[a]) for a in self.attributes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        self.eval()
        return losses

    @torch.no_grad()
    def predict_embeddings(self, emb: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """N x 128 embeddings -> {attribute: N int64 predicted classes}."""
        logits = self.eval()(torch.as_tensor(np.asarray(emb), dtype=torch.float32))
        return {a: v.argmax(1) for a, v in logits.items()}

    def predict_images(self, images: torch.Tensor | np.ndarray, box_fractions: tuple[float, ...] | list[float],
                       progress: bool | None = None) -> dict[str, torch.Tensor]:
        """Chips N x 3 x H x W (see ``chip_embeddings``) -> {attribute: N int64 predicted classes}."""
        return self.predict_embeddings(chip_embeddings(images, box_fractions, progress))

    def config(self) -> dict[str, Any]:
        return {"arch": ARCH, "attributes": self.attributes, "hidden": self.hidden}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``<path stem>.safetensors`` (tensors) and ``<path stem>.json`` (config + ``extra``);
        ``path`` as given by ``classifiers.classifier_path(name)``. -> the .safetensors path."""
        path = Path(path).with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({**self.config(), **(extra or {})}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingAdversary":
        """Rebuild a saved adversary (any of ``<stem>``, ``<stem>.pt``, ``.json``, ``.safetensors``), in eval mode."""
        path = Path(path)
        cfg = json.loads(path.with_suffix(".json").read_text())
        if cfg.get("arch") != ARCH:
            raise ValueError(f"{path}: arch {cfg.get('arch')!r} is not an embedding adversary ({ARCH})")
        model = cls(cfg["attributes"], cfg.get("hidden", 0))
        model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
        return model.eval()
