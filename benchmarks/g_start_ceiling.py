"""What the best possible G would buy: the refinement's steps from a start that replays the refinement's
own answer (the answers stage's final change, through G's output space: its work size, its bound of at
most epsilon times the face mask and budget, its RMS cap), against the steps from zero, on the answers'
validation faces, in one process.

    python benchmarks/g_start_ceiling.py [--threads 2]

No trained G can do better than this replay: it is what G is trained to reproduce. Needs the classifiers
and answers stages' outputs (artifacts/). Prints one line per start and writes
benchmarks/results/g_start_ceiling.json (steps, the share protected by the start alone and in all, ms a
face, the histogram of steps from zero).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from invisible_face.method.ldman_training import ldman_config, new_generator
from invisible_face.models.classifiers import load_surrogate
from invisible_face.params import load_params
from invisible_face.protect.answers import params_protector


class AnswerReplay(nn.Module):
    """A stand-in G whose unit output is each face's answer divided by G's bound (clipped to [-1, 1]):
    G's perturbation is then the answer as far as G's output space holds it. Faces come in the order
    of ``targets``."""

    def __init__(self, like: nn.Module, targets: torch.Tensor, bounds: torch.Tensor) -> None:
        super().__init__()
        self.epsilon, self.work_size, self.use_direction = like.epsilon, like.work_size, False
        self.units = (targets / (like.epsilon * bounds).clamp_min(1e-6)).clamp(-1, 1)
        self.next = 0

    def config(self) -> dict:
        return {"replay": "the answers stage's final changes"}

    def forward(self, face: torch.Tensor, sets: torch.Tensor, direction: torch.Tensor | None) -> torch.Tensor:
        out = self.units[self.next:self.next + len(face)]
        self.next += len(face)
        return out


def run(protector, images: list[np.ndarray]) -> dict:
    t0 = time.perf_counter()
    records = [recs[0] for _, recs in protector.protect_chips(images)]
    ms = 1000 * (time.perf_counter() - t0) / len(images)
    steps = np.array([r.steps for r in records])
    return {"steps_mean": float(steps.mean()), "alone_share": float(np.mean([r.path == "generator" for r in records])),
            "protected_share": float(np.mean([r.path != "not_protected" for r in records])), "ms_per_face": ms,
            "steps_histogram": np.bincount(steps).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/g_start_ceiling.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_params()
    answers = np.load("artifacts/answers/answers.npz")
    val = np.flatnonzero(answers["split"] == "val")
    images = [np.asarray(Image.open(Path(cfg["data"]["image_dir"]) / f).convert("RGB")) for f in answers["files"][val]]
    surrogate = load_surrogate(cfg)
    replay = AnswerReplay(new_generator(ldman_config(cfg)), torch.from_numpy(answers["target"][val].astype(np.float32)),
                          torch.from_numpy(answers["bound"][val].astype(np.float32)))
    results = {"from_zero": run(params_protector(cfg, None, surrogate), images),
               "answer_replay": run(params_protector(cfg, replay, surrogate), images)}
    for name, r in results.items():
        print(f"{name:<14} steps {r['steps_mean']:5.2f}  alone {r['alone_share']:.3f}  "
              f"protected {r['protected_share']:.3f}  {r['ms_per_face']:6.0f} ms a face")
    saved = 1 - results["answer_replay"]["steps_mean"] / results["from_zero"]["steps_mean"]
    print(f"steps saved by the best possible G: {saved:.3f}")
    Path(args.out).write_text(json.dumps({"faces": len(images), "threads": args.threads, "steps_saved": saved,
                                          **results, "machine": platform.processor() or platform.machine(),
                                          "date": date.today().isoformat()}, indent=2))


if __name__ == "__main__":
    main()
