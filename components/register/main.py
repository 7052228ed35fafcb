"""register stage: the protector into the MLflow Model Registry; alias ``champion`` moves to it
only if it passes the gates in params (lower bounds on the evaluate stage's headline figures) and its
H-PN is not below the champion's.

Output: artifacts/register/decision.json (version, promoted, reasons).
"""

from __future__ import annotations

import json
from pathlib import Path

from invisible_face.evaluate.registry import register_protector
from invisible_face.stage import Stage, stage_parser


def main() -> None:
    parser = stage_parser(__doc__, "artifacts/register")
    parser.add_argument("--model", default="artifacts/export/protector")
    parser.add_argument("--metrics", default="artifacts/evaluate/metrics.json")
    stage = Stage.start(parser, experiment="register")  # register_protector opens the run itself
    args, cfg = stage.args, stage.params["register"]
    # the headline figures at the top of metrics.json (the deployed protector's, label-free)
    metrics = {k: v for k, v in json.loads(Path(args.metrics).read_text()).items() if isinstance(v, (int, float))}
    decision = register_protector(args.model, cfg["model_name"], metrics, cfg["gates"] or {})  # null: no gates
    (stage.out / "decision.json").write_text(json.dumps(decision, indent=2))
    print(json.dumps(decision, indent=2))


if __name__ == "__main__":
    main()
