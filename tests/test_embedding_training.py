"""The embedding heads of the classifiers stage (invisible_face.models.embedding_training): which
settings each role reads, and one fit on tiny chips with the dlib embedding replaced by a stand-in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from invisible_face.models import embedding_adversary, face_backbone
from invisible_face.models.embedding_adversary import EmbeddingAdversary
from invisible_face.models.embedding_training import fit_heads, heads_spec


def test_each_role_reads_its_own_section(params) -> None:
    cfg = params["classifiers"]
    target, surrogate = heads_spec(params, "target"), heads_spec(params, "surrogate")
    assert (target.name, target.arch, target.split) == (cfg["embedding_adversary"]["name"], embedding_adversary.ARCH,
                                                        "target_train")
    assert (surrogate.name, surrogate.arch, surrogate.split) == (cfg["face_surrogate"]["name"], face_backbone.ARCH,
                                                                 "surrogate_train")
    assert target.test_images == surrogate.test_images == cfg["embedding_adversary"]["test_images"]
    assert target.size == params["ldman"]["image_size"] and target.box == tuple(params["landmarks"]["fallback_box"])
    logged = surrogate.run_params(params)
    assert logged["epochs"] == cfg["face_surrogate"]["epochs"] and logged["split"] == "surrogate_train"
    assert logged["box"] == ",".join(map(str, params["landmarks"]["fallback_box"]))
    with pytest.raises(ValueError, match="unknown role"):
        heads_spec(params, "scraper")


@pytest.fixture()
def tiny_chips(tmp_path: Path) -> tuple[Path, Path]:
    """24 flat-coloured 32 px chips whose colour follows gender, and a manifest with their splits."""
    folder, rows = tmp_path / "chips", []
    folder.mkdir()
    for i in range(24):
        gender, split = i % 2, "target_train" if i < 16 else "test"
        Image.fromarray(np.full((32, 32, 3), 60 + 120 * gender, np.uint8)).save(folder / f"{i}.png")
        rows.append({"file": f"{i}.png", "gender": gender, "age_bin": i % 5, "race": i % 5, "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv", folder


def test_fit_trains_on_its_split_and_scores_the_test_chips(params, tiny_chips, monkeypatch) -> None:
    def brightness(images: torch.Tensor, box) -> np.ndarray:  # stands in for dlib: 128 copies of the mean
        return np.repeat(images.float().mean((1, 2, 3)).numpy()[:, None] / 255, 128, 1).astype(np.float32)

    monkeypatch.setattr(embedding_adversary, "chip_embeddings", brightness)
    cfg = {**params["classifiers"]["embedding_adversary"], "train_images": None, "epochs": 50, "hidden": 0}
    spec = replace(heads_spec(params, "target"), cfg=cfg, size=32, test_images=None)
    fit = fit_heads(params, spec, *tiny_chips)
    assert isinstance(fit.model, EmbeddingAdversary) and len(fit.losses) == 50
    assert (fit.train_images, fit.test_images) == (16, 8)
    assert fit.accuracy["gender"] == 1.0  # brightness tells gender apart
    assert all(m.sum() == 8 for m in fit.confusion.values())
    figures = fit.metrics()
    assert list(figures) == ["test_acc_gender", "test_acc_age_bin", "test_acc_race", "test_acc_mean", "train_time_s",
                             "train_images", "test_images", "embed_ms_per_chip", "train_loss"]
