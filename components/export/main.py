"""export stage: the self-contained protector, from the trained G, the surrogate and the params (with the
tune stage's step schedule, and ``protector.start: auto`` resolved by the train stage's ``g_start_pays``).

Its own stage so that changing how the protector runs (``protector`` params, refinement, region
search settings) re-exports in seconds instead of retraining LD-MAN. Outputs (artifacts/export/):
protector.safetensors + protector.json (with ``protector.audit_model``, a zoo model the protector
never attacks, for the Serve app's /analyze), what the CLI, the evaluation, the registry and the Serve
app load (tensors and a plain config only, never a pickle: docs/design.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from invisible_face.method.ldman_training import ldman_config, new_generator
from invisible_face.models.classifiers import classifier_path, load_surrogate
from invisible_face.models.networks import load_classifier
from invisible_face.params import with_tuned
from invisible_face.protect.protector import export_protector
from invisible_face.stage import Stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/export")
    parser.add_argument("--generator", default="artifacts/train/generator.pt")
    parser.add_argument("--tuned", default=None, help="the tune stage's best.json (its step schedule)")
    parser.add_argument("--train-metrics", default="artifacts/train/metrics.json",
                        help="the train stage's metrics: whether G's start pays (protector.start: auto)")
    stage = Stage.start(parser)
    args = stage.args
    cfg = with_tuned(stage.params, args.tuned)
    if cfg["protector"]["start"] == "auto":
        pays = json.loads(Path(args.train_metrics).read_text())["g_start_pays"]
        cfg["protector"]["start"] = "generator" if pays else "zero"
        print(f"protector.start: auto -> {cfg['protector']['start']} (G's start pays on validation faces: {pays})")
    generator = new_generator(ldman_config(cfg))
    generator.load_state_dict(torch.load(args.generator, map_location="cpu", weights_only=True))
    surrogate = load_surrogate(cfg)  # the ResNet-18, with the face-backbone surrogate when configured
    audit = cfg["protector"]["audit_model"]
    target = (audit, load_classifier(classifier_path(audit))) if audit else None
    stem = export_protector(stage.out / "protector", generator, surrogate, cfg, target)
    print(f"protector exported to {stem}.safetensors + .json")


if __name__ == "__main__":
    main()
