"""tune stage: Ray Tune (ASHA, seeded search) over LD-MAN's loss weights.

Outputs (artifacts/tune/): best.json (the overrides the train stage reads: loss_weights),
trials.csv (one row per trial: weights, G's validation protected share, H-PN, MOSR, SSIM, PSNR; a DVC plot),
metrics.json. The tuning run and its nested trial runs are in the MLflow experiment "tune".
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from invisible_face.method.ldman_training import ldman_config, ldman_scaling
from invisible_face.method.tuning import OBJECTIVE, tune_weights
from invisible_face.stage import Stage, stage_parser
from invisible_face.tracking import tracking_uri


def main() -> None:
    stage = Stage.start(stage_parser(__doc__, "artifacts/tune"), experiment="tune")
    cfg, out = stage.params, stage.out
    tcfg = cfg["tune"]
    base = {**ldman_config(cfg), **tcfg["trial"]}  # trials train shorter and on fewer chips
    scaling = {**ldman_scaling(cfg["ldman"]), "max_failures": 0}
    run_params = {k: v for k, v in tcfg.items() if k != "trial"} | {f"trial.{k}": v for k, v in tcfg["trial"].items()}
    with stage.run("tune-ldman", params=run_params) as parent:
        tracking = {"uri": tracking_uri(), "experiment_id": stage.experiment_id, "parent_run_id": parent.info.run_id}
        best, trials = tune_weights(base, tcfg, scaling, Path(cfg["classifiers"]["storage_path"]), tracking,
                                    cfg["seed"])
        trials.to_csv(out / "trials.csv", index=False)
        (out / "best.json").write_text(json.dumps(best, indent=2))
        done = trials.dropna(subset=[OBJECTIVE]) if OBJECTIVE in trials else trials.iloc[0:0]
        metrics = {"trials": len(trials), "trials_finished": len(done),
                   f"best_{OBJECTIVE}": float(done[OBJECTIVE].max()) if len(done) else None}
        stage.write_metrics(metrics, log=True, show=False)  # printed below, with the weights
        mlflow.log_dict(best, "best.json")
        mlflow.log_artifact(str(out / "trials.csv"))
    print(json.dumps({**metrics, **best}, indent=2))


if __name__ == "__main__":
    main()
