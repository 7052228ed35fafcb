"""register stage: the protector into the MLflow Model Registry; alias ``champion`` moves to it
only if it passes the gates in params (lower bounds on the evaluate stage's headline figures) and its
H-PN is not below the champion's.

Output: artifacts/register/decision.json (version, promoted, reasons).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from invisible_face.evaluate.registry import register_protector
from invisible_face.params import load_params
from invisible_face.tracking import setup_mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="artifacts/export/protector")
    parser.add_argument("--metrics", default="artifacts/evaluate/metrics.json")
    parser.add_argument("--out", default="artifacts/register")
    args = parser.parse_args()

    cfg = load_params(args.params)["register"]
    # the headline figures at the top of metrics.json (the deployed protector's, label-free)
    metrics = {k: v for k, v in json.loads(Path(args.metrics).read_text()).items() if isinstance(v, (int, float))}
    setup_mlflow("register")
    decision = register_protector(args.model, cfg["model_name"], metrics, cfg["gates"] or {})  # null: no gates
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decision.json").write_text(json.dumps(decision, indent=2))
    print(json.dumps(decision, indent=2))


if __name__ == "__main__":
    main()
