"""ms per image of the region search (Algorithm 1), batched scoring against one candidate per
forward pass, measured in the same run on the same images and seeds.

    python benchmarks/regions_speed.py [--images 100]

Uses the trained surrogate from artifacts/classifiers/models when present (run `dvc repro
classifiers` first), otherwise a randomly initialised network of the same architecture, and says which.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from invisible_face.data.faces import load_image
from invisible_face.method.regions import select_region
from invisible_face.models.networks import build_classifier, load_classifier
from invisible_face.params import PROJECT_ROOT, load_params


def run(model, images, points, cfg, seed: int, chunk: int) -> tuple[float, list]:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    regions = [select_region(model, im, pts, cfg, rng, chunk=chunk) for im, pts in zip(images, points)]
    return 1000 * (time.perf_counter() - start) / len(images), regions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    cfg = load_params(PROJECT_ROOT / "params.yaml")
    ccfg, rcfg = cfg["classifiers"], cfg["regions"]
    weights = PROJECT_ROOT / "artifacts/classifiers/models" / f"{ccfg['surrogate']['name']}.pt"
    if weights.exists():
        model, which = load_classifier(weights), f"trained {weights.name}"
    else:
        attrs = {k: len(v["classes"]) for k, v in cfg["data"]["attributes"].items()}
        model = build_classifier(ccfg["surrogate"]["arch"], attrs, ccfg["input_size"]).eval()
        which = f"randomly initialised {ccfg['surrogate']['arch']} (no trained surrogate found)"
    marks = np.load(PROJECT_ROOT / "artifacts/landmarks/landmarks.npz")
    image_dir = PROJECT_ROOT / cfg["data"]["image_dir"]
    names = marks["files"][: args.images]
    images = [load_image(image_dir / str(n)).float() / 255
              for n in names]
    points = marks["points"][: args.images]
    print(f"{len(images)} chips, surrogate: {which}, restarts={rcfg['restarts']}, "
          f"score_batch={rcfg['score_batch']}, torch threads={torch.get_num_threads()}")

    run(model, images[:5], points[:5], rcfg, 0, 0)  # warm-up
    batched_ms, batched = run(model, images, points, rcfg, cfg["seed"], chunk=0)
    single_ms, single = run(model, images, points, rcfg, cfg["seed"], chunk=1)
    same = sum(a.rect == b.rect for a, b in zip(batched, single))
    print(f"batched scoring      {batched_ms:7.1f} ms/image")
    print(f"one at a time        {single_ms:7.1f} ms/image")
    print(f"speed-up             {single_ms / batched_ms:7.2f}x  (same region on {same}/{len(images)} images)")
    print(f"candidates scored    {np.mean([r.scored for r in batched]):7.1f} per image; "
          f"mean area {np.mean([r.area for r in batched]):.3f}")
    print("paper: 1.15 s per image on an RTX 3090")


if __name__ == "__main__":
    main()
