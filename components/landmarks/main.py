"""landmarks stage: 68-point landmarks for every valid image of the manifest.

Outputs (artifacts/landmarks/): landmarks.npz (files, points (N,68,2), box (N,4), score, detected,
backend), landmarks.csv (one row per image with its status), metrics.json (coverage, backend, ms/img).
An image where no face is detected is kept with status ``no_face``; its points come from the
configured fallback box of an aligned chip, so later stages can still use it (or skip it).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from invisible_face.data.landmarks import Face, make_backend
from invisible_face.stage import Stage, stage_parser

_backend = None


def _init(kind: str, upsample: int) -> None:
    global _backend
    _backend = make_backend(kind, upsample)


def _one(args: tuple[str, tuple[float, ...]]) -> tuple[Face, str]:
    path, fallback = args
    image = np.asarray(Image.open(path).convert("RGB"))
    return _backend.chip(image, fallback, _backend.upsample), _backend.name


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/landmarks")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    stage = Stage.start(parser)
    args, cfg, out = stage.args, stage.params, stage.out
    lcfg = cfg["landmarks"]
    files = pd.read_csv(args.manifest)["file"].tolist()
    image_dir = Path(cfg["data"]["image_dir"])
    jobs = [(str(image_dir / f), tuple(lcfg["fallback_box"])) for f in files]

    start = time.perf_counter()
    with ProcessPoolExecutor(lcfg["workers"], initializer=_init, initargs=(lcfg["backend"], lcfg["upsample"])) as pool:
        results = list(tqdm(pool.map(_one, jobs, chunksize=32), total=len(jobs), desc="landmarks", unit="img"))
    elapsed = time.perf_counter() - start

    faces = [face for face, _ in results]
    backend = results[0][1] if results else "none"
    np.savez_compressed(
        out / "landmarks.npz",
        files=np.array(files), backend=np.array(backend),
        points=np.stack([f.points for f in faces]).astype(np.float32),
        box=np.array([f.box for f in faces], dtype=np.float32),
        score=np.array([f.score for f in faces], dtype=np.float32),
        detected=np.array([f.detected for f in faces]),
    )
    pd.DataFrame({
        "file": files,
        "status": ["detected" if f.detected else "no_face" for f in faces],
        "score": [round(f.score, 4) for f in faces],
        "box": [" ".join(f"{v:.1f}" for v in f.box) for f in faces],
        "backend": backend,
    }).to_csv(out / "landmarks.csv", index=False)
    detected = sum(f.detected for f in faces)
    metrics = {
        "backend": backend, "images": len(faces), "detected": detected,
        "no_face": len(faces) - detected, "coverage": detected / max(len(faces), 1),
        "ms_per_image_wall": 1000 * elapsed / max(len(faces), 1), "workers": lcfg["workers"],
    }
    stage.write_metrics(metrics)


if __name__ == "__main__":
    main()
