"""directions stage: label-free DP and plausible-class sets for every chip LD-MAN trains on, at G's
work size (invisible_face.method.directions.set_direction), cached for training.

Outputs (artifacts/directions/): directions.npz (files, sets N x K bool, bits N x bytes (DP packed
one bit per value), shape), metrics.json (ms per chip; how far one full-budget step along DP over
the face mask already protects, label-free).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from invisible_face.data.faces import FaceAttributes
from invisible_face.method.directions import pack_signs, set_direction
from invisible_face.method.ldman import sets_vector
from invisible_face.method.ldman_training import chip_masks
from invisible_face.models.classifiers import MODELS_DIR, attribute_sizes, surrogate_path
from invisible_face.models.margins import attribute_margins, protected
from invisible_face.models.networks import load_classifier
from invisible_face.stage import Stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/directions")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    parser.add_argument("--classifiers", default=str(MODELS_DIR))
    parser.add_argument("--landmarks", default="artifacts/landmarks/landmarks.npz")
    stage = Stage.start(parser)
    args, cfg, out = stage.args, stage.params, stage.out
    dcfg, lcfg, pcfg = cfg["directions"], cfg["ldman"], cfg["protector"]
    surrogate = load_classifier(surrogate_path(cfg, Path(args.classifiers)))
    faces = FaceAttributes(args.manifest, cfg["data"]["image_dir"], lcfg["train_splits"], list(attribute_sizes(cfg)),
                           size=lcfg["work_size"], limit=lcfg["train_images"], seed=cfg["seed"])
    files = faces.table["file"].tolist()
    masks = chip_masks(files, dict(np.load(args.landmarks)), cfg["validate"]["expected_size"][0], lcfg["work_size"],
                       pcfg["mask"])
    sets, bits, protected_share, start = [], [], [], time.perf_counter()
    for i in tqdm(range(0, len(faces), dcfg["batch_size"]), desc="directions", unit="batch", mininterval=10):
        images = faces.images[i:i + dcfg["batch_size"]].float() / 255
        direction, classes = set_direction(surrogate, images, dcfg["cover"], lcfg["kappa"])
        sets.append(sets_vector(classes).bool())
        bits.extend(np.frombuffer(pack_signs(d)[0], dtype=np.uint8) for d in direction)
        with torch.no_grad():
            stepped = (images + lcfg["epsilon"] * direction * masks[i:i + len(images)]).clamp(0, 1)
            margins = attribute_margins(surrogate(stepped), classes)
        protected_share.append(protected(margins, pcfg["refine"]["stop_margin"]))
    elapsed = time.perf_counter() - start

    np.savez_compressed(out / "directions.npz", files=np.array(files).astype(str), sets=torch.cat(sets).numpy(),
                        bits=np.stack(bits), shape=np.array(faces.images.shape[1:]))
    metrics = {"images": len(faces), "ms_per_image": 1000 * elapsed / len(faces),
               "one_step_protected_share": torch.cat(protected_share).float().mean().item()}
    stage.write_metrics(metrics)


if __name__ == "__main__":
    main()
