"""Generic data-parallel training on Ray Train (V2 API), shared by the classifier and LD-MAN stages.

Driver side: ``init_ray`` (joins ``RAY_ADDRESS`` or starts a local cluster sized from params) and
``fit`` (a ``TorchTrainer`` with DDP over gloo on CPU or NCCL on GPU, a checkpoint per epoch and
``FailureConfig(max_failures)``, so a failed worker group restarts from the last checkpoint).

Worker side: the skeleton every training function here follows, so that each concern lives once::

    rank, world, device = worker_context(config)            # rank, world size, device; torch seeded
    loader = shard_loader(train_data, config["batch_size"], world)    # global batch split per worker
    history, start = resume({"model": model, "optimizer": opt})       # after a restart, else ([], 1)
    model = ray.train.torch.prepare_model(model)
    for epoch in range(start, epochs + 1):
        maybe_inject_failure(config, epoch, rank, world)     # fault-tolerance tests only
        set_epoch(loader, epoch)
        ...                                                  # steps under autocast(device)
        history.append(metrics)
        report_epoch(metrics, {"model": model, "optimizer": opt}, epoch=epoch, history=history)

and on the driver ``fit_state`` runs it and returns the last checkpoint's state. Lower-level pieces:
``restore``/``report`` (a checkpoint's state dict), ``unwrap`` (DDP's ``.module``), ``autocast`` on
GPUs, ``all_reduce_sum`` for exact global metrics. Workers change directory: pass absolute paths
in the config.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

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


def fit_state(train_fn: Callable[[dict[str, Any]], None], config: dict[str, Any], *, name: str,
              storage_path: str | Path, **scaling: Any) -> dict[str, Any]:
    """``fit`` and return the state saved by the run's last ``report`` (its last checkpoint);
    raises RuntimeError (from the run's error) when the run failed. ``scaling``: keys of ``fit``."""
    result = fit(train_fn, config, name=name, storage_path=storage_path, **scaling)
    if result.error is not None:
        raise RuntimeError(f"Ray Train run {name} failed") from result.error
    return load_state(result.checkpoint)


# --- worker side -------------------------------------------------------------------------------

class WorkerContext(NamedTuple):
    rank: int
    world: int
    device: torch.device


def worker_context(config: dict[str, Any], *, seed_per_rank: bool = False) -> WorkerContext:
    """This worker's (rank, world size, device), with torch seeded from ``config["seed"]``
    (plus the rank when ``seed_per_rank``, so that workers draw different random numbers)."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + (rank if seed_per_rank else 0))
    return WorkerContext(rank, world, ray.train.torch.get_device())


def per_worker_batch(batch_size: int, world: int) -> int:
    """Each worker's share of a global batch size (at least 1)."""
    return max(1, batch_size // world)


def shard_loader(dataset: Dataset, batch_size: int, world: int, *, drop_last: bool | None = None) -> DataLoader:
    """A shuffled loader over this worker's shard of ``dataset``, ``batch_size`` being the global
    batch (``per_worker_batch`` per worker). ``drop_last`` None: drop the last partial batch when
    the data holds more than one global batch."""
    per_worker = per_worker_batch(batch_size, world)
    if drop_last is None:
        drop_last = len(dataset) > per_worker * world
    return ray.train.torch.prepare_data_loader(
        DataLoader(dataset, batch_size=per_worker, shuffle=True, drop_last=drop_last))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a sharded loader for ``epoch`` (a no-op when it has no distributed sampler)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (``.module``), or the model itself."""
    return model.module if hasattr(model, "module") else model


def resume(stateful: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """After a restart, load the last checkpoint into each object of ``stateful`` ({state key:
    model/optimizer/scheduler, anything with ``load_state_dict``}) -> (history so far, first
    epoch to run); ([], 1) on a fresh start. Call before ``prepare_model``."""
    state = restore()
    if state is None:
        return [], 1
    for key, obj in stateful.items():
        obj.load_state_dict(state[key])
    return state["history"], state["epoch"] + 1


def report_epoch(metrics: dict[str, Any], stateful: Mapping[str, Any], *, epoch: int,
                 history: list[dict[str, Any]], **extra: Any) -> None:
    """``report`` an epoch's metrics with the checkpoint ``resume`` and ``fit_state`` read:
    {key: unwrap(obj).state_dict() for ``stateful``, "epoch", "history", **extra}."""
    state = {key: unwrap(obj).state_dict() for key, obj in stateful.items()}
    report(metrics, {**state, "epoch": epoch, "history": history, **extra})


def maybe_inject_failure(config: dict[str, Any], epoch: int, rank: int, world: int) -> None:
    """Fault-tolerance tests only: when ``config["fail_at_epoch"] == epoch``, the last of several
    workers waits until the checkpoints reported so far are registered (so the restart resumes
    from the previous epoch), writes ``config["fail_marker"]`` and kills its process; once per run
    (the marker's presence stops it the next time). A no-op without ``fail_at_epoch``."""
    if config.get("fail_at_epoch") != epoch or world < 2 or rank != world - 1:
        return
    marker = Path(config["fail_marker"])
    if marker.exists():
        return
    ray.train.get_all_reported_checkpoints(timeout_s=60)
    marker.write_text(f"worker {rank} died at epoch {epoch}\n")
    os._exit(1)


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
