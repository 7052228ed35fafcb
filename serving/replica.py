"""The model replica: ``ProtectorModel``, one loaded protector per Ray Serve replica.

It loads the export once (a local stem, or a version of the MLflow registry: ``resolve_model``) and
protects photos. Concurrent requests are gathered by ``@serve.batch`` into one call (up to
``max_batch_size`` photos), and the faces of all those photos are protected together
(``Protector.protect_photos``: every face in one working frame, so faces from different requests share
each forward and backward pass, ``protector.batch_size`` faces stepping at once, the batch topped up
as faces finish). One batch runs per replica
at a time, on the replica's one torch thread (no thread oversubscription on small machines), which
leaves the replica's event loop free for health checks. The batch size each request rode in comes
back in the ``X-Batch-Size`` header, and ``/healthz`` counts the sizes seen.
"""

import asyncio
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from invisible_face.params import PROJECT_ROOT

TARGET_UNAVAILABLE = {"available": False,
                      "reason": "this protector export holds no audit model (protector.audit_model)"}


def resolve_model(source: str, tracking_uri: str | None = None) -> Path:
    """Local export stem for ``source``: a path (relative to the project root), or
    ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` from the MLflow registry, whose
    version's source is downloaded into a temporary folder."""
    if not source.startswith("models:/"):
        path = Path(source)
        return path if path.is_absolute() else PROJECT_ROOT / path
    import mlflow
    from mlflow import MlflowClient

    from invisible_face.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, alias_sep, alias = source.removeprefix("models:/").partition("@")
    if alias_sep:
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = name.partition("/")
        version = client.get_model_version(name, number)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=uri,
                                                     dst_path=tempfile.mkdtemp(prefix="protector-")))
    stems = sorted(p.with_suffix("") for p in local.rglob("*.safetensors") if p.with_suffix(".json").exists())
    if not stems:
        raise FileNotFoundError(f"{source} (version {version.version}, {version.source}) holds no protector export")
    return stems[0]


@serve.deployment(ray_actor_options={"num_cpus": 2})
class ProtectorModel:
    """One loaded protector per replica; photos from concurrent requests are batched."""

    def __init__(self, model: str, mlflow_tracking_uri: str | None, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        from invisible_face.protect.protector import Protector

        self.source = model
        # every torch call of this replica runs on this one thread: a second thread starting its own
        # OpenMP team beside the first made one portrait take 2,806 ms against 1,530 (docs/serving.md)
        self.torch_thread = ThreadPoolExecutor(1, thread_name_prefix="protector")
        self.protector = self.torch_thread.submit(Protector.load, resolve_model(model, mlflow_tracking_uri)).result()
        # each strength preset once, sharing the networks; a request picks one by name
        self.presets = {name: self.protector.with_strength(name) for name in self.protector.settings["strengths"]}
        self.set_batching(max_batch_size, batch_wait_timeout_s)
        self.batch_sizes: Counter[int] = Counter()
        # warm-up: one aligned chip through every step (landmarks, region, DP, G), so the first
        # user does not pay for lazy initialisation; Serve routes nothing here before __init__ ends
        self.torch_thread.submit(self.protector.protect_chip, np.full((200, 200, 3), 128, np.uint8)).result()
        self.torch_threads = self.torch_thread.submit(torch.get_num_threads).result()  # its intra-op threads
        self.warm = True

    def info(self) -> dict[str, Any]:
        """Model and batching state for ``/healthz`` and ``/analyze``."""
        surrogate = self.protector.config["surrogate"]
        members = surrogate.get("members", {"surrogate": surrogate})  # an ensemble, or one classifier
        return {"model": self.source, "warm": self.warm,
                "replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                "torch_threads": self.torch_threads,
                "surrogate": {"arch": " + ".join(m["arch"] for m in members.values()),
                              "input_size": " / ".join(str(m["input_size"]) for m in members.values())},
                "attributes": self.protector.config["attributes"],
                "target": ({"available": True,
                            **{k: self.protector.config["target"][k] for k in ("name", "arch", "input_size")}}
                           if self.protector.target is not None else TARGET_UNAVAILABLE),
                **self.batching,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}

    def set_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """Change batching on this replica at run time (through a handle; no redeploy)."""
        self.batching = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s}
        self.protect_batch.set_max_batch_size(max_batch_size)
        self.protect_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def protect(self, rgb: np.ndarray, strength: str | None = None) -> dict[str, Any]:
        """Protect one RGB uint8 photo at a strength preset -> {"rgb", "faces", "batch_size"} or {"error"}."""
        return await self.protect_batch((rgb, strength))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05, max_concurrent_batches=1)
    async def protect_batch(self, requests: list[tuple[np.ndarray, str | None]]) -> list[dict[str, Any]]:
        self.batch_sizes[len(requests)] += 1
        return await asyncio.get_running_loop().run_in_executor(self.torch_thread, self._protect_all, requests)

    def _protect_all(self, requests: list[tuple[np.ndarray, str | None]]) -> list[dict[str, Any]]:
        from invisible_face.protect.protector import records_as_dicts

        results: list[dict[str, Any]] = [{} for _ in requests]
        by_strength: dict[str | None, list[int]] = {}
        for i, (_, strength) in enumerate(requests):
            by_strength.setdefault(strength, []).append(i)
        for strength, group in by_strength.items():  # the faces of each preset's photos in one batch
            protector = self.presets[strength] if strength else self.protector
            try:
                done = protector.protect_photos([np.ascontiguousarray(requests[i][0]) for i in group])
            except Exception:  # noqa: BLE001 - find the failing photo: one at a time, so the others still pass
                done = [self._protect_one(protector, requests[i][0]) for i in group]
            for i, answer in zip(group, done):
                results[i] = answer if isinstance(answer, dict) else {
                    "rgb": answer[0], "faces": records_as_dicts(answer[1]), "batch_size": len(requests)}
        return results

    @staticmethod
    def _protect_one(protector: Any, rgb: np.ndarray) -> tuple | dict[str, Any]:
        try:
            return protector.protect(np.ascontiguousarray(rgb))
        except Exception as err:  # noqa: BLE001 - reported to that request only
            return {"error": f"{type(err).__name__}: {err}"}
