"""Shared fixtures: small synthetic UTKFace-like folders, photos composed from the dataset, the committed params."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invisible_face.params import PROJECT_ROOT, load_params


@pytest.fixture(scope="session")
def params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def utkface_dir(params) -> Path:
    """The dataset's chips, pulled from the DVC remote on first use (``dvc pull data.dvc``, as a fresh
    clone needs); the test is skipped, with the reason, when the remote cannot give them."""
    image_dir = PROJECT_ROOT / params["data"]["image_dir"]
    if not any(image_dir.glob("*.jpg")):
        pulled = subprocess.run(["dvc", "pull", "data.dvc"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        if not any(image_dir.glob("*.jpg")):
            pytest.skip(f"no UTKFace chips in {image_dir} and `dvc pull data.dvc` failed: {pulled.stderr[-500:]}")
    return image_dir


@pytest.fixture(scope="session")
def photos(utkface_dir, tmp_path_factory) -> Path:
    """A folder of photos composed from UTKFace chips (invisible_face.data.synthetic_photos.LAYOUTS:
    one face, two with one rolled 15 degrees, a 60 px one, one at the edge, none, grayscale, RGBA PNG)."""
    from invisible_face.data.synthetic_photos import write_photos

    return write_photos(utkface_dir, tmp_path_factory.mktemp("photos"))


def write_chip(path: Path, seed: int, size=(200, 200), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze()).convert(mode).save(path, quality=90)


@pytest.fixture()
def chip_folder(tmp_path: Path) -> Path:
    """60 good chips over all classes, plus one of each kind of bad row."""
    folder = tmp_path / "utkface"
    folder.mkdir()
    i = 0
    for gender in (0, 1):
        for race in range(5):
            for age in (5, 25, 45, 65, 85, 30):
                write_chip(folder / f"{age}_{gender}_{race}_2017011617{i:07d}.jpg.chip.jpg", seed=i)
                i += 1
    (folder / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(
        (folder / "5_0_0_20170116170000000.jpg.chip.jpg").read_bytes()[:10] + b"x" * 5000)
    (folder / "40_1_1_20170116999999999.jpg.chip.jpg").write_text("this is not an image")
    good = (folder / "25_0_1_20170116170000007.jpg.chip.jpg").read_bytes()
    (folder / "41_1_2_20170116888888888.jpg.chip.jpg").write_bytes(good[: len(good) // 2])  # truncated
    write_chip(folder / "50_0_3_20170116777777777.jpg.chip.jpg", seed=999, mode="L")
    write_chip(folder / "51_0_3_20170116666666666.jpg.chip.jpg", seed=998, size=(100, 120))
    write_chip(folder / "130_0_3_20170116555555555.jpg.chip.jpg", seed=997)  # age out of range
    write_chip(folder / "52_7_3_20170116444444444.jpg.chip.jpg", seed=996)   # gender out of range
    # a byte-identical copy under another name with the same labels: collapsed, not quarantined
    (folder / "25_0_1_20170117000000001.jpg.chip.jpg").write_bytes(good)
    return folder


@pytest.fixture()
def small_cfg(params: dict, chip_folder: Path) -> dict:
    cfg = copy.deepcopy(params)
    cfg["data"]["image_dir"] = str(chip_folder)
    cfg["validate"]["limit"] = None
    cfg["validate"]["max_bad_share"] = 0.2
    cfg["validate"]["class_share_bounds"] = [0.0, 1.0]
    return cfg


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for every test that trains (2 CPUs: two 1-CPU workers)."""
    import ray

    started = not ray.is_initialized()
    if started:
        # dashboard on: Ray Train's placement-group cleaner needs the state API (see distributed.init_ray)
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_protector(tmp_path_factory, params) -> Path:
    """An export of untrained networks (fast): for I/O behaviour, never for protection quality."""
    from invisible_face.protect.protector import untrained_export

    return untrained_export(tmp_path_factory.mktemp("export") / "protector", params)


def pytest_collection_modifyitems(items):
    """The end-to-end ``dvc repro`` runs last, after the in-process Ray of the other tests is gone."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
