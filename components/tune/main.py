"""tune stage: Ray Tune (ASHA, seeded search) over LD-MAN's loss weights.

Outputs (artifacts/tune/): best.json (the overrides the train stage reads: loss_weights),
trials.csv (one row per trial: weights, G's validation protected share, H-PN, MOSR, SSIM, PSNR; a DVC plot),
metrics.json. The tuning run and its nested trial runs are in the MLflow experiment "tune".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlflow

from invisible_face.method.ldman_training import ldman_config, ldman_scaling
from invisible_face.method.tuning import OBJECTIVE, tune_weights
from invisible_face.params import load_params
from invisible_face.tracking import run_tags, setup_mlflow, tracking_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="artifacts/tune")
    args = parser.parse_args()

    cfg = load_params(args.params)
    tcfg = cfg["tune"]
    base = {**ldman_config(cfg), **tcfg["trial"]}  # trials train shorter and on fewer chips
    scaling = {**ldman_scaling(cfg["ldman"]), "max_failures": 0}
    experiment_id = setup_mlflow("tune")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(run_name="tune-ldman", tags=run_tags()) as parent:
        mlflow.log_params({k: v for k, v in tcfg.items() if k != "trial"}
                          | {f"trial.{k}": v for k, v in tcfg["trial"].items()})
        tracking = {"uri": tracking_uri(), "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}
        best, trials = tune_weights(base, tcfg, scaling, Path(cfg["classifiers"]["storage_path"]), tracking,
                                    cfg["seed"])
        trials.to_csv(out / "trials.csv", index=False)
        (out / "best.json").write_text(json.dumps(best, indent=2))
        done = trials.dropna(subset=[OBJECTIVE]) if OBJECTIVE in trials else trials.iloc[0:0]
        metrics = {"trials": len(trials), "trials_finished": len(done),
                   f"best_{OBJECTIVE}": float(done[OBJECTIVE].max()) if len(done) else None}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_dict(best, "best.json")
        mlflow.log_artifact(str(out / "trials.csv"))
    print(json.dumps({**metrics, **best}, indent=2))


if __name__ == "__main__":
    main()
