"""regions stage: Algorithm 1's local region for every image of the configured splits.

Outputs (artifacts/regions/): regions.npz (files, rect (N,4) x0 y0 x1 y1 px, area, objective,
divergence, center, trajectory (N,T) NaN-padded), regions.csv, metrics.json, regions.png
(area histogram and where regions fall on the face).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from invisible_face.data.faces import load_image, sample_rows
from invisible_face.method.regions import rect_masks, select_region
from invisible_face.models.classifiers import MODELS_DIR, surrogate_path
from invisible_face.models.networks import load_classifier
from invisible_face.stage import Stage, stage_parser


def summary_figure(rects: np.ndarray, areas: np.ndarray, size: tuple[int, int], path: Path) -> None:
    coverage = rect_masks(torch.from_numpy(rects), size[1], size[0]).mean(0)[0].numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.hist(areas, bins=40, color="tab:blue")
    a.set(xlabel="region area (fraction of the chip)", ylabel="images", title="Region areas")
    im = b.imshow(coverage, cmap="magma", vmin=0)
    b.set(title="Share of images whose region covers each pixel", xticks=[], yticks=[])
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/regions")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    parser.add_argument("--landmarks", default="artifacts/landmarks/landmarks.npz")
    parser.add_argument("--classifiers", default=str(MODELS_DIR))
    stage = Stage.start(parser)
    args, cfg, out = stage.args, stage.params, stage.out
    rcfg = cfg["regions"]
    manifest = pd.read_csv(args.manifest)
    # a seeded sample of each split: the same rows (or a superset of them) later stages load with their limits
    files = [f for split in rcfg["splits"]
             for f in sample_rows(manifest, [split], rcfg["limits"].get(split), cfg["seed"])["file"].tolist()]
    marks = np.load(args.landmarks)
    index = {f: i for i, f in enumerate(marks["files"].tolist())}
    model = load_classifier(surrogate_path(cfg, args.classifiers))
    image_dir = Path(cfg["data"]["image_dir"])
    rng = np.random.default_rng(cfg["seed"])

    regions, start = [], time.perf_counter()
    for name in tqdm(files, desc="regions", unit="img"):
        image = load_image(image_dir / name).float() / 255
        regions.append(select_region(model, image, marks["points"][index[name]], rcfg, rng))
    elapsed = time.perf_counter() - start

    rects = np.array([r.rect for r in regions], dtype=np.float32)
    areas = np.array([r.area for r in regions], dtype=np.float32)
    longest = max(len(r.trajectory) for r in regions)
    trajectory = np.full((len(regions), longest), np.nan, dtype=np.float32)
    for i, r in enumerate(regions):
        trajectory[i, : len(r.trajectory)] = r.trajectory
    np.savez_compressed(
        out / "regions.npz", files=np.array(files), rect=rects, area=areas,
        objective=np.array([r.objective for r in regions], dtype=np.float32),
        divergence=np.array([r.divergence for r in regions], dtype=np.float32),
        center=np.array([r.center for r in regions], dtype=np.float32), trajectory=trajectory,
    )
    pd.DataFrame({
        "file": files, "x0": rects[:, 0], "y0": rects[:, 1], "x1": rects[:, 2], "y1": rects[:, 3],
        "area": areas.round(4), "divergence": [round(r.divergence, 4) for r in regions],
        "steps": [len(r.trajectory) - 1 for r in regions],
    }).to_csv(out / "regions.csv", index=False)
    summary_figure(rects, areas, cfg["validate"]["expected_size"], out / "regions.png")
    metrics = {
        "images": len(regions), "mean_area": float(areas.mean()), "median_area": float(np.median(areas)),
        "mean_divergence": float(np.mean([r.divergence for r in regions])),
        "mean_candidates_scored": float(np.mean([r.scored for r in regions])),
        "ms_per_image": 1000 * elapsed / max(len(regions), 1),
    }
    stage.write_metrics(metrics)


if __name__ == "__main__":
    main()
