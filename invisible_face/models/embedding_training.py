"""Attribute heads on dlib's face embedding, trained and scored for the classifiers stage, in two roles
(the stage adds the MLflow run and the files):

- ``target``: the embedding adversary (params ``classifiers.embedding_adversary``), on target_train,
  embedded by dlib itself as a scraper would (:mod:`invisible_face.models.embedding_adversary`);
- ``surrogate``: the defender's face-backbone surrogate (``classifiers.face_surrogate``), on
  surrogate_train, embedded by the PyTorch copy of the same network it attacks through
  (:mod:`invisible_face.models.face_backbone`).

Chips load at the 200 px the evaluation protects them at (params ``ldman.image_size``); the test
split is a seeded sample of ``classifiers.embedding_adversary.test_images`` chips for both roles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invisible_face.data.faces import FaceAttributes
from invisible_face.metrics import accuracy_and_confusion
from invisible_face.models import embedding_adversary, face_backbone
from invisible_face.models.classifiers import accuracy_summary, attribute_sizes
from invisible_face.models.embedding_adversary import EmbeddingAdversary
from invisible_face.models.face_backbone import FaceBackboneSurrogate

ROLES = ("target", "surrogate")


@dataclass(frozen=True)
class HeadsSpec:
    """What one role trains: its params section ``cfg``, saved model ``name`` and ``arch``, training
    ``split``, chip ``size`` (px), face ``box`` (fractions of the chip) and ``test_images``."""

    role: str
    cfg: dict[str, Any]
    name: str
    arch: str
    split: str
    size: int
    box: tuple[float, ...]
    test_images: int | None

    def run_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The MLflow run's params: the section's training settings, the chips, seed and attributes."""
        return {**{k: self.cfg[k] for k in ("train_images", "hidden", "epochs", "lr", "weight_decay")},
                "image_size": self.size, "box": ",".join(map(str, self.box)), "seed": params["seed"],
                "attributes": ",".join(attribute_sizes(params)), "split": self.split}


def heads_spec(params: dict[str, Any], role: str) -> HeadsSpec:
    """The :class:`HeadsSpec` of ``role`` (one of :data:`ROLES`) from params."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use {', '.join(ROLES)}")
    cfg = params["classifiers"]["embedding_adversary" if role == "target" else "face_surrogate"]
    return HeadsSpec(role, cfg, cfg["name"],
                     embedding_adversary.ARCH if role == "target" else face_backbone.ARCH,
                     "target_train" if role == "target" else "surrogate_train",
                     int(params["ldman"]["image_size"]), tuple(params["landmarks"]["fallback_box"]),
                     params["classifiers"]["embedding_adversary"]["test_images"])


@dataclass
class FittedHeads:
    """A trained role: ``model`` (what is saved), the per-step training ``losses``, test ``accuracy``
    and ``confusion`` by attribute, and what it cost."""

    model: EmbeddingAdversary | FaceBackboneSurrogate
    losses: list[float]
    accuracy: dict[str, float]
    confusion: dict[str, np.ndarray]
    train_s: float
    embed_ms_per_chip: float
    train_images: int
    test_images: int

    def metrics(self) -> dict[str, Any]:
        """The role's figures in the stage's metrics.json (and its MLflow run)."""
        return {**accuracy_summary(self.accuracy), "train_time_s": round(self.train_s, 1),
                "train_images": self.train_images, "test_images": self.test_images,
                "embed_ms_per_chip": round(self.embed_ms_per_chip, 1), "train_loss": round(self.losses[-1], 4)}


def fit_heads(params: dict[str, Any], spec: HeadsSpec, manifest: Path, image_dir: Path) -> FittedHeads:
    """Embed ``spec``'s training chips, fit the heads (full batch, seeded), score them on the test chips."""
    attributes, seed, cfg = attribute_sizes(params), params["seed"], spec.cfg
    embed: Callable[[torch.Tensor], np.ndarray]
    if spec.role == "target":
        model = EmbeddingAdversary(attributes, cfg["hidden"])
        heads = model
        embed = lambda images: embedding_adversary.chip_embeddings(images, spec.box)
    else:
        model = FaceBackboneSurrogate(attributes, cfg["hidden"], spec.box)
        heads = model.heads
        embed = lambda images: face_backbone.embed_in_batches(model, images)

    def chips(split: str, limit: int | None) -> FaceAttributes:
        return FaceAttributes(manifest, image_dir, [split], list(attributes), size=spec.size, limit=limit, seed=seed)

    t0 = time.time()
    train = chips(spec.split, cfg["train_images"])
    t_embed = time.time()
    embeddings = embed(train.images)
    ms_per_chip = 1000 * (time.time() - t_embed) / len(train)
    losses = heads.fit(embeddings, train.labels, cfg["epochs"], cfg["lr"], cfg["weight_decay"], seed)
    train_s = time.time() - t0
    test = chips("test", spec.test_images)
    accuracy, confusion = accuracy_and_confusion(heads.predict_embeddings(embed(test.images)), test.labels,
                                                 attributes)
    return FittedHeads(model, losses, accuracy, confusion, train_s, ms_per_chip, len(train), len(test))
