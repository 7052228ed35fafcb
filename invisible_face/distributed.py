"""Generic data-parallel training on Ray Train (V2 API), shared by the classifier and LD-MAN stages.

Driver side: ``init_ray`` (joins ``RAY_ADDRESS`` or starts a local cluster sized from params) and
``fit`` (a ``TorchTrainer`` with DDP over gloo on CPU or NCCL on GPU, a checkpoint per epoch and
``FailureConfig(max_failures)``, so a failed worker group restarts from the last checkpoint).

Worker side (inside the training function): ``restore`` the last checkpoint, ``report`` metrics
with a checkpoint every epoch, ``autocast`` on GPUs, ``all_reduce_sum`` for exact global metrics.
Workers change directory: pass absolute paths in the config.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

STATE_FILE = "state.pt"


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster at ``RAY_ADDRESS`` when set, else start a local one with ``num_cpus``."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # The dashboard serves the state API that Ray Train's placement-group cleaner queries:
        # without it, a run that Tune's ASHA stops early leaks its workers' CPUs and the next
        # trial waits for ever.
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=True)


def fit(train_fn: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str,
        storage_path: str | Path, num_workers: int = 2, use_gpu: bool = False,
        cpus_per_worker: float = 1, max_failures: int = 0, keep_checkpoints: int = 2,
        num_cpus: int | None = None, callbacks: list | None = None) -> ray.train.Result:
    """Run ``train_fn(config)`` on ``num_workers`` DDP workers and return the Ray ``Result``.

    A run with the same ``name`` under ``storage_path`` resumes from its latest checkpoint
    (Ray Train V2 run restoration); give a fresh name for a fresh run.
    """
    init_ray(num_cpus)
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=callbacks,  # e.g. Tune's TuneReportCallback when run inside a trial
        ),
    )
    return trainer.fit()


# --- worker side -------------------------------------------------------------------------------

def restore() -> dict[str, Any] | None:
    """The state dict saved by the last ``report`` of this run (after a restart), else None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """Driver side: the state saved in a checkpoint of a finished run."""
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
    """Report this epoch's metrics from every worker; rank 0 attaches ``state`` as the checkpoint."""
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 mixed precision on a GPU (no grad scaler needed); a no-op on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all workers (identity outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
