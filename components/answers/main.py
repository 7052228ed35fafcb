"""answers stage: the refinement's own answers on G's faces, G's teacher (docs/design.md, "The generator").

The protector of the params without G (``start: zero``) protects a seeded sample of G's training
chips (``answers.train_images`` of ``ldman.train_splits``) and of the validation chips G is checked on
(``answers.val_images``); for each face it keeps, at G's work size, the face, G's inputs as the
protector computes them (DP and every ensemble member's sets, the bound G may use), the refinement's
final change (what G learns to reproduce) and the steps it took from zero (what G's start is measured
against). The faces are spread over Ray tasks of ``answers.shard`` faces each, one CPU each: a cluster
(RAY_ADDRESS) runs as many at once as it has CPUs.

Outputs (artifacts/answers/): answers.npz (files, split and the arrays of
invisible_face.protect.answers.refinement_answers), metrics.json (faces, steps from zero, protected share,
faces a second).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from tqdm import tqdm

from invisible_face.data.faces import FaceAttributes
from invisible_face.models import distributed
from invisible_face.models.classifiers import attribute_sizes
from invisible_face.stage import Stage, stage_parser


@ray.remote(num_cpus=1)
def answer_shard(cfg: dict[str, Any], root: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """One Ray task: :func:`refinement_answers` on a shard of chips (N x H x W x 3 uint8), one thread."""
    from invisible_face.protect.answers import params_protector, refinement_answers

    os.chdir(root)  # the artifacts' relative paths
    torch.set_num_threads(1)
    lcfg = cfg["ldman"]
    protector = params_protector(cfg, None)
    return refinement_answers(protector, list(images), lcfg["work_size"], cfg["directions"]["cover"], lcfg["kappa"])


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/answers")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    stage = Stage.start(parser)
    cfg, out, acfg = stage.params, stage.out, stage.params["answers"]
    attributes = list(attribute_sizes(cfg))
    chips = {split: FaceAttributes(stage.args.manifest, cfg["data"]["image_dir"], splits, attributes,
                                   size=cfg["validate"]["expected_size"][0], limit=limit, seed=cfg["seed"])
             for split, splits, limit in (("train", cfg["ldman"]["train_splits"], acfg["train_images"]),
                                          ("val", ["val"], acfg["val_images"]))}
    files = [f for c in chips.values() for f in c.table["file"].tolist()]
    split = [s for s, c in chips.items() for _ in range(len(c))]
    images = np.concatenate([c.images.permute(0, 2, 3, 1).numpy() for c in chips.values()])

    distributed.init_ray(cfg["classifiers"]["num_cpus"])
    start = time.perf_counter()
    size = acfg["shard"]
    tasks = [answer_shard.remote(cfg, str(Path.cwd()), images[i:i + size]) for i in range(0, len(images), size)]
    shards = []
    with tqdm(total=len(images), desc="answers", unit="face", mininterval=10) as progress:
        for task in tasks:  # in order; each finished shard shows
            shards.append(ray.get(task))
            progress.update(len(shards[-1]["steps"]))
    elapsed = time.perf_counter() - start
    answers = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    np.savez_compressed(out / "answers.npz", files=np.array(files).astype(str), split=np.array(split).astype(str),
                        shape=np.array([3, cfg["ldman"]["work_size"], cfg["ldman"]["work_size"]]), **answers)
    train = np.array(split) == "train"
    metrics = {"faces": len(files), "train_faces": int(train.sum()), "val_faces": int((~train).sum()),
               "tasks": len(tasks), "faces_per_s": len(files) / elapsed,
               "steps_mean_from_zero": float(answers["steps"].mean()),
               "val_steps_mean_from_zero": float(answers["steps"][~train].mean()),
               "protected_share_from_zero": float(answers["protected"].mean())}
    stage.write_metrics(metrics)


if __name__ == "__main__":
    main()
