"""tune stage: Ray Tune (ASHA, seeded search) over LD-MAN's loss weights and the refinement's step schedule.

Outputs (artifacts/tune/): best.json (the overrides the train and export stages merge into params:
``ldman.loss_weights`` and ``protector.refine``'s step schedule), trials.csv (one row per trial: its sample
and figures, the objective first; a DVC plot), metrics.json (the best and worst trial's objective, their
spread, and the best trial's second seed: ``seed_noise``). The tuning run and its nested trial runs are in
the MLflow experiment "tune".
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import mlflow

from invisible_face.method.ldman_training import ldman_config, ldman_scaling
from invisible_face.method.tuning import OBJECTIVE, tune_weights
from invisible_face.params import deep_merge
from invisible_face.protect.answers import start_check
from invisible_face.stage import Stage, stage_parser
from invisible_face.tracking import tracking_uri


def main() -> None:
    stage = Stage.start(stage_parser(__doc__, "artifacts/tune"), experiment="tune")
    cfg, out = stage.params, stage.out
    tcfg = cfg["tune"]
    base = {**ldman_config(cfg), **tcfg["trial"]}  # trials train shorter
    scaling = {**ldman_scaling(cfg["ldman"]), "max_failures": 0}
    # each trial's step schedule -> its check (absolute paths: a trial runs in its own folder)
    absolute = deep_merge(cfg, {"data": {"image_dir": str(Path(cfg["data"]["image_dir"]).resolve())}})
    make_check = functools.partial(start_check, absolute, artifacts=Path("artifacts").resolve())
    run_params = {k: v for k, v in tcfg.items() if k != "trial"} | {f"trial.{k}": v for k, v in tcfg["trial"].items()}
    with stage.run("tune-ldman", params=run_params) as parent:
        tracking = {"uri": tracking_uri(), "experiment_id": stage.experiment_id, "parent_run_id": parent.info.run_id}
        best, trials, again = tune_weights(base, tcfg, make_check, scaling, Path(cfg["classifiers"]["storage_path"]),
                                           tracking, cfg["seed"])
        trials.to_csv(out / "trials.csv", index=False)
        (out / "best.json").write_text(json.dumps(best, indent=2))
        done = trials.dropna(subset=[OBJECTIVE]) if OBJECTIVE in trials else trials.iloc[0:0]
        top, bottom = (float(done[OBJECTIVE].max()), float(done[OBJECTIVE].min())) if len(done) else (None, None)
        metrics = {"trials": len(trials), "trials_finished": len(done), "objective": OBJECTIVE,
                   "best_objective": top, "worst_objective": bottom,
                   "objective_spread": top - bottom if len(done) else None,
                   "best_second_seed_objective": again[OBJECTIVE],
                   "seed_noise": abs(top - again[OBJECTIVE]) if len(done) and again[OBJECTIVE] is not None else None,
                   **{f"best_second_seed_{k}": v for k, v in again.items() if k != OBJECTIVE}}
        stage.write_metrics(metrics, log=True, show=False)  # printed below, with the choice
        mlflow.log_dict(best, "best.json")
        mlflow.log_artifact(str(out / "trials.csv"))
    print(json.dumps({**metrics, **best}, indent=2))


if __name__ == "__main__":
    main()
