"""Ray Tune over LD-MAN's loss weights Lambda (Eq. 20) and the refinement's step schedule.

Train V2 pattern: each trial is a function that builds and fits a ``TorchTrainer`` (through
``distributed.fit``); ``TuneReportCallback`` forwards the workers' per-epoch reports to Tune, so
ASHA can stop weak trials early. The objective is what a user gets: the share of validation faces
the deployed protector, starting from the trial's G with the trial's step schedule, protects within a
few steps (the trial's ``check``, :class:`invisible_face.protect.answers.StartCheck`): it moves with
G's reach and with the steps it saves. Every trial is an MLflow run nested under the tuning run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from invisible_face.method.ldman_training import LOSS_NAMES, train_loop
from invisible_face.models import distributed

OBJECTIVE = "val_protected_within_steps"
FIGURES = (OBJECTIVE, "val_g_alone_share", "val_protected_share", "val_steps_mean", "val_steps_saved",
           "val_ms_per_face")
# (overrides of params protector.refine) -> a callable G -> figures (with OBJECTIVE)
CheckFactory = Callable[[dict[str, Any]], Callable]


def search_space(tcfg: dict[str, Any]) -> dict[str, Any]:
    """One log-uniform weight per loss term named in ``weight_bounds`` (L_distill's weight stays 1, the
    scale the others are set against) and one uniform value per ``refine_bounds`` key."""
    unknown = set(tcfg["weight_bounds"]) - set(LOSS_NAMES[1:])
    if unknown:
        raise ValueError(f"tune.weight_bounds: {sorted(unknown)} cannot be tuned; choose from {LOSS_NAMES[1:]}")
    return {f"w_{name}": tune.loguniform(*bounds) for name, bounds in tcfg["weight_bounds"].items()} | {
        f"refine_{name}": tune.uniform(*bounds) for name, bounds in tcfg.get("refine_bounds", {}).items()}


def as_overrides(trial_config: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """Tune's flat sample -> overrides of params' own sections (what ``best.json`` holds):
    ``ldman.loss_weights`` by name (the untuned ones as in ``weights``) and ``protector.refine``."""
    refine = {k[7:]: v for k, v in trial_config.items() if k.startswith("refine_")}
    return {"ldman": {"loss_weights": {**weights, **{k[2:]: v for k, v in trial_config.items()
                                                      if k.startswith("w_")}}},
            "protector": {"refine": refine}}


def trial_config(base: dict[str, Any], overrides: dict[str, Any], make_check: CheckFactory,
                 seed: int | None = None) -> dict[str, Any]:
    """The Train worker config of one trial: ``base`` with the trial's loss weights, its check built
    with the trial's step schedule, and ``seed`` when given."""
    config = {**base, **overrides["ldman"], "check": make_check(overrides["protector"]["refine"])}
    return config if seed is None else {**config, "seed": seed}


def _trial(sample: dict[str, Any], base: dict[str, Any], make_check: CheckFactory, scaling: dict[str, Any],
           storage_path: str, tracking: dict[str, str]) -> None:
    """One trial: fit LD-MAN with the sampled weights, checked with the sampled step schedule; log the
    trial as a nested MLflow run."""
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(base, as_overrides(sample, base["loss_weights"]), make_check)
    mlflow.set_tracking_uri(tracking["uri"])
    with mlflow.start_run(experiment_id=tracking["experiment_id"], run_name=f"trial-{trial_id}",
                          tags={"mlflow.parentRunId": tracking["parent_run_id"], "trial_id": trial_id}):
        mlflow.log_params(sample)
        result = distributed.fit(train_loop, config, name=f"tune-{trial_id}", storage_path=storage_path,
                                 callbacks=[TuneReportCallback()], **scaling)
        if result.error is not None:
            raise result.error
        for _, row in result.metrics_dataframe.iterrows():
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k.startswith(("val_", "train_"))
                                and pd.notna(v)}, step=int(row["epoch"]))


def tune_weights(base: dict[str, Any], tcfg: dict[str, Any], make_check: CheckFactory, scaling: dict[str, Any],
                 storage_path: str | Path, tracking: dict[str, str], seed: int
                 ) -> tuple[dict[str, Any], pd.DataFrame, dict[str, float]]:
    """Run the search, then the best trial again with the next seed
    -> (best overrides, one row per trial with its sample and final figures, the second seed's figures)."""
    distributed.init_ray(scaling.get("num_cpus"))
    # the objective is reported at the epochs G is checked, not at every epoch
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    storage_path = str(Path(storage_path).resolve())
    trainable = tune.with_parameters(_trial, base=base, make_check=make_check, scaling=scaling,
                                     storage_path=storage_path, tracking=tracking)
    # The trial itself only waits on its Train workers, which hold the CPUs (on 2 cores
    # a 1-CPU trial plus two 1-CPU workers would wait for ever). Ray refuses an empty request, so
    # the trial asks for a token of memory instead of a CPU.
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 64 * 2**20})
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(tcfg),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode="max", num_samples=tcfg["num_samples"],
            # max_t past the last epoch: a trial that ends is never killed by the scheduler (a
            # killed Train run can leave its workers' CPUs reserved on Ray 2.60, starving the
            # next trial); ASHA's early stops happen only at rungs below the last epoch.
            scheduler=ASHAScheduler(max_t=base["epochs"] + 1, grace_period=tcfg["grace_period"], time_attr="epoch"),
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=tcfg["max_concurrent_trials"]),
        ),
        run_config=tune.RunConfig(name="tune-ldman", storage_path=storage_path),
    )
    grid = tuner.fit()
    rows = []
    for result in grid:
        if result.error is not None or not result.metrics:
            rows.append({**result.config, "error": str(result.error)})
            continue
        rows.append({**result.config, "epoch": result.metrics.get("epoch"),
                     **{k: result.metrics.get(k) for k in FIGURES}})
    best = grid.get_best_result(metric=OBJECTIVE, mode="max", scope="last")
    overrides = as_overrides(best.config, base["loss_weights"])
    again = distributed.fit(train_loop, trial_config(base, overrides, make_check, seed + 1),
                            name=f"tune-best-seed-{tracking['parent_run_id'][:8]}", storage_path=storage_path,
                            **scaling)
    if again.error is not None:
        raise again.error
    return overrides, pd.DataFrame(rows), {k: again.metrics.get(k) for k in FIGURES}
