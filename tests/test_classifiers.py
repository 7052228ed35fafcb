"""Attribute classifiers: architectures, Ray Train DDP training, and recovery from a dead worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from invisible_face.data.faces import FaceAttributes
from invisible_face.models import distributed
from invisible_face.models.classifiers import (
    MODELS_DIR,
    accuracy_summary,
    classifier_path,
    classifier_specs,
    evaluate,
    models_dir,
    surrogate_path,
    train_classifier,
    training_config,
)
from invisible_face.models.networks import ARCHS, build_classifier, load_classifier, save_classifier

ATTRS = {"gender": 2, "age_bin": 5, "race": 5}
SCALING = {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1, "max_failures": 0,
           "keep_checkpoints": 2, "num_cpus": 2}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """36 random 200x200 JPEG chips and a manifest with every split."""
    root = tmp_path_factory.mktemp("tiny")
    folder = root / "utkface"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    splits = ["surrogate_train"] * 16 + ["target_train"] * 8 + ["val"] * 6 + ["test"] * 6
    for i, split in enumerate(splits):
        name = f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(folder / name)
        rows.append({"file": name, "gender": i % 2, "age_bin": i % 5, "race": (i // 2) % 5, "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv", folder


def loop_config(manifest: Path, image_dir: Path, **overrides) -> dict:
    config = {"arch": "vgg11_bn_small", "attributes": ATTRS, "input_size": 32, "image_size": 32,
              "manifest": str(manifest), "image_dir": str(image_dir), "train_splits": ["surrogate_train"],
              "val_splits": ["val"], "epochs": 2, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0,
              "flip": True, "seed": 0}
    return config | overrides


@pytest.mark.parametrize("arch", ARCHS)
def test_build_classifier_shapes_any_input_size(arch: str) -> None:
    model = build_classifier(arch, ATTRS, input_size=64).eval()
    for size in (64, 200):
        x = torch.rand(2, 3, size, size, requires_grad=True)
        out = model(x)
        assert set(out) == set(ATTRS)
        assert all(out[a].shape == (2, n) for a, n in ATTRS.items())
    sum(o.sum() for o in out.values()).backward()  # differentiable through the internal resize
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_save_and_load_classifier(tmp_path: Path) -> None:
    model = build_classifier("resnet18", ATTRS, input_size=32).eval()
    path = save_classifier(model, tmp_path / "m.pt", extra={"role": "surrogate"})
    assert json.loads(path.with_suffix(".json").read_text())["arch"] == "resnet18"
    assert all(torch.is_tensor(v) for v in torch.load(path, weights_only=True).values())
    again = load_classifier(path)
    # loaded for inference in NHWC layout: same calls, within float rounding
    assert again.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 50, 50)
    with torch.no_grad():
        assert torch.allclose(model(x)["race"], again(x)["race"], atol=1e-5)


def test_dataset_loads_splits_in_unit_range(tiny_data) -> None:
    manifest, folder = tiny_data
    data = FaceAttributes(manifest, folder, ["val", "test"], list(ATTRS), size=32)
    assert len(data) == 12
    x, y = data[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(y) == set(ATTRS) and y["gender"].dtype == torch.int64


def test_ray_train_two_workers_then_load_and_predict(ray_cluster, tiny_data, tmp_path: Path) -> None:
    manifest, folder = tiny_data
    model, history = train_classifier(loop_config(manifest, folder), name="tiny",
                                      storage_path=tmp_path / "ray", scaling=SCALING)
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(0 <= row["val_acc_gender"] <= 1 and np.isfinite(row["train_loss"]) for row in history)
    path = save_classifier(model, tmp_path / "tiny.pt")
    loaded = load_classifier(path)
    test = FaceAttributes(manifest, folder, ["test"], list(ATTRS), size=32)
    accuracy, confusion = evaluate(loaded, test, ATTRS)
    assert set(accuracy) == set(ATTRS)
    assert confusion["age_bin"].shape == (5, 5) and confusion["age_bin"].sum() == len(test)


def test_dead_worker_resumes_from_last_checkpoint(ray_cluster, tiny_data, tmp_path: Path) -> None:
    """The last worker os._exit()s at the start of epoch 2 (first attempt only): the worker group
    restarts under FailureConfig and continues at epoch 2 from the epoch-1 checkpoint."""
    manifest, folder = tiny_data
    marker = tmp_path / "died"
    config = loop_config(manifest, folder, epochs=3, fail_at_epoch=2, fail_marker=str(marker))
    _, history = train_classifier(config, name="dies", storage_path=tmp_path / "ray",
                                  scaling=SCALING | {"max_failures": 1})
    assert marker.exists()
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["resumed_at"] for row in history] == [1, 2, 2]


def test_classifier_paths() -> None:
    params = {"classifiers": {"surrogate": {"name": "surrogate_resnet18"}}}
    assert classifier_path("target_vgg") == Path("artifacts/classifiers/models/target_vgg.pt")
    assert surrogate_path(params) == MODELS_DIR / "surrogate_resnet18.pt"
    assert surrogate_path(params, "x/models") == Path("x/models/surrogate_resnet18.pt")
    assert models_dir("/tmp/art") == Path("/tmp/art/classifiers/models")


def test_the_stage_trains_the_surrogate_then_the_zoo_each_with_its_own_overrides(params) -> None:
    specs = classifier_specs(params)
    cfg = params["classifiers"]
    assert [s["name"] for s in specs] == [cfg["surrogate"]["name"]] + [m["name"] for m in cfg["zoo"]]
    assert [s["role"] for s in specs] == ["surrogate"] + ["target"] * len(cfg["zoo"])
    assert specs[0]["splits"] == ["surrogate_train"] and all(s["splits"] == ["target_train"] for s in specs[1:])

    spec = {"name": "t", "arch": "vgg11_bn_small", "epochs": 3, "lr": 0.5, "role": "target", "splits": ["target_train"]}
    config = training_config(params, spec, Path("/m.csv"), Path("/img"))
    assert config["lr"] == 0.5 and config["batch_size"] == cfg["batch_size"]  # its own lr, the section's batch
    assert config["channels_last"] is False and config["epochs"] == 3 and config["train_splits"] == ["target_train"]
    assert config["attributes"] == {a: len(s["classes"]) for a, s in params["data"]["attributes"].items()}
    assert (config["manifest"], config["image_dir"], config["seed"]) == ("/m.csv", "/img", params["seed"])
    assert training_config(params, {**spec, "batch_size": 4, "channels_last": True}, Path("/m"), Path("/i"))[
        "batch_size"] == 4


def test_accuracy_summary_adds_the_mean() -> None:
    assert accuracy_summary({"gender": 0.75, "race": 0.25}) == {"test_acc_gender": 0.75, "test_acc_race": 0.25,
                                                                "test_acc_mean": 0.5}


def test_worker_helpers_outside_ray() -> None:
    """The pieces of the worker skeleton that need no Ray worker."""
    model = torch.nn.Linear(2, 2)
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert distributed.unwrap(wrapper) is model and distributed.unwrap(model) is model
    assert distributed.per_worker_batch(8, 3) == 2 and distributed.per_worker_batch(1, 4) == 1
    distributed.maybe_inject_failure({"seed": 0}, 1, 0, 2)  # no fail_at_epoch: nothing happens
    distributed.maybe_inject_failure({"fail_at_epoch": 1, "fail_marker": "unused"}, 1, 0, 2)  # not the last rank

    class Sampler:
        epoch = None

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    loader = torch.utils.data.DataLoader(range(4), sampler=Sampler())
    distributed.set_epoch(loader, 3)
    assert loader.sampler.epoch == 3
    distributed.set_epoch(torch.utils.data.DataLoader(range(4), shuffle=True), 3)  # no distributed sampler
