"""ms per image for each landmark backend, detection included, on UTKFace chips; then dlib's detection
on photos (at the protector's upsampling): by default photos composed from the chips
(invisible_face.data.synthetic_photos), or the in-the-wild photos of ``--photos DIR``.

FAN's weights cannot be downloaded here: when they are not in the torch hub cache this script
times a network of FAN's architecture with random weights in a temporary cache (speed does not
depend on the weight values) and says so.

    python benchmarks/landmarks_speed.py [--images 200] [--photos DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from invisible_face.data.landmarks import fan_weights_path, make_backend
from invisible_face.data.synthetic_photos import face_count, write_photos
from invisible_face.params import PROJECT_ROOT, load_params


def time_backend(backend, images: list[np.ndarray], fallback) -> tuple[float, int]:
    backend.chip(images[0], fallback)  # warm-up
    start = time.perf_counter()
    detected = sum(backend.chip(im, fallback).detected for im in images)
    return 1000 * (time.perf_counter() - start) / len(images), detected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--photos", type=Path, help="a folder of in-the-wild photos "
                        "(default: photos composed from the chips)")
    args = parser.parse_args()
    cfg = load_params(PROJECT_ROOT / "params.yaml")
    lcfg = cfg["landmarks"]
    image_dir = PROJECT_ROOT / cfg["data"]["image_dir"]
    paths = sorted(image_dir.glob("*.jpg"))[: args.images]
    chips = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.photos or write_photos(image_dir, tmp)
        photos = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir()) if p.is_file()}
    print(f"{len(chips)} UTKFace chips (200x200), upsample={lcfg['upsample']}, torch threads={torch.get_num_threads()}")

    results = {}
    dlib_backend = make_backend("dlib", lcfg["upsample"])
    results["dlib"] = time_backend(dlib_backend, chips, lcfg["fallback_box"])

    note = ""
    with tempfile.TemporaryDirectory() as tmp:
        if not fan_weights_path().exists():
            from face_alignment.models import FAN

            os.environ["TORCH_HOME"] = tmp
            fan_weights_path().parent.mkdir(parents=True)
            torch.save(FAN(4).state_dict(), fan_weights_path())
            note = " (random weights: FAN's are not cached here)"
        fan_backend = make_backend("fan", lcfg["upsample"])
        results["fan"] = time_backend(fan_backend, chips, lcfg["fallback_box"])

    for name, (ms, detected) in results.items():
        print(f"{name:5s} {ms:7.1f} ms/chip  faces detected {detected}/{len(chips)}"
              f"{note if name == 'fan' else ''}")
    print(f"fan/dlib time ratio: {results['fan'][0] / results['dlib'][0]:.1f}x")
    upsample = cfg["protector"]["upsample"]  # photos are detected as the protector does, not as chips
    for name, photo in photos.items():
        start = time.perf_counter()
        faces = dlib_backend.detect(photo, upsample)
        placed = "" if args.photos else f" of {face_count(name)} placed"
        print(f"dlib on {name} ({photo.shape[1]}x{photo.shape[0]}, upsample {upsample}): "
              f"{1000 * (time.perf_counter() - start):.0f} ms, {len(faces)} face(s){placed}")


if __name__ == "__main__":
    main()
