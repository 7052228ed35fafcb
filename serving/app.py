"""Ray Serve application: the protector behind an HTTP API and a web page.

Two deployments:

- ``ProtectorModel`` loads the export once per replica and protects photos. Concurrent requests
  are gathered by ``@serve.batch`` into one call (up to ``max_batch_size`` photos). What batching
  buys here is honest but modest: the photos of a batch then run one after the other through
  ``Protector.protect`` on the replica's one torch thread (each face is protected at its own
  resolution, so face tensors of different sizes are not stacked into one forward pass). The batch keeps one
  protection running per replica at a time (no thread oversubscription on small machines) and
  leaves the replica's event loop free for health checks. The batch size each request rode in
  comes back in the ``X-Batch-Size`` header, and ``/healthz`` counts the sizes seen.
- ``Ingress`` (FastAPI) checks and decodes uploads, calls the model, encodes the answer. Bad input
  never reaches the model: size limit (413), pixel limit and decompression bombs (413), content
  sniffed from the bytes by ``read_photo`` (422 when it is not a readable image, 415 when it is an
  animation or a multi-page file: see ``photo_io.read_photo``).

A model replica that dies under a call (SIGKILL, out-of-memory kill, node loss: Ray's
``RayActorError`` family) costs no request: ``/protect`` and ``/analyze`` are idempotent, so the
ingress sends the call once more, to another replica or to the one Serve starts in its place, and
answers 503 only when that second try fails too. The retried answer carries ``X-Retried: 1``;
``/healthz`` counts retries (``ingress.retried``, ``ingress.retried_ok``). Overload is not retried:
a full queue (Serve's ``BackPressureError``) answers 503 with ``Retry-After: 1`` at once.

Every error is a JSON object ``{"error": message, "status": code}``. Settings come from the
application's ``args`` in ``serving/config.yaml`` (the one source of truth); ``from_config``
builds the same application from that file for tests and benchmarks.
"""

import asyncio
import base64
import json
import logging
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import exceptions as serve_exceptions
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from invisible_face.params import PROJECT_ROOT
from invisible_face.protect.photo_io import (
    FORMATS,
    Photo,
    PhotoError,
    PhotoTooLarge,
    PhotoUnsupported,
    read_photo,
    write_photo,
)

SERVING_DIR = Path(__file__).resolve().parent
CONFIG_PATH = SERVING_DIR / "config.yaml"
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
               "TIFF": "image/tiff"}
logger = logging.getLogger("ray.serve")
# a call's replica died or cannot be reached (ReplicaUnavailableError: Serve's own, where this Ray has it)
REPLICA_GONE = (RayActorError, *[c for c in [getattr(serve_exceptions, "ReplicaUnavailableError", None)] if c])
Strength = Literal["light", "standard", "strong"]  # the export's presets (params.yaml, protector.strengths)
TARGET_UNAVAILABLE = {"available": False,
                      "reason": "this protector export holds no audit model (protector.audit_model)"}


@dataclass(frozen=True)
class Settings:
    """The application's ``args`` (see ``serving/config.yaml`` for what each one means)."""

    model: str
    mlflow_tracking_uri: str | None
    max_upload_bytes: int
    max_pixels: int
    max_batch_size: int
    batch_wait_timeout_s: float
    request_timeout_s: float


# ---------------------------------------------------------------------------------------- model

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
        self.presets = {name: self.protector.with_strength(name) for name in self.protector.config["strengths"]}
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

        results = []
        for rgb, strength in requests:  # one failing photo must not fail the others of its batch
            try:
                protector = self.presets[strength] if strength else self.protector
                out, records = protector.protect(np.ascontiguousarray(rgb))
                results.append({"rgb": out, "faces": records_as_dicts(records), "batch_size": len(requests)})
            except Exception as err:  # noqa: BLE001 - reported to that request only
                results.append({"error": f"{type(err).__name__}: {err}"})
        return results


# ---------------------------------------------------------------------------------------- HTTP

class ApiError(Exception):
    """An error answered as JSON with its HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


api = FastAPI(title="Invisible-Face", version="0.1.0",
              description="Protects facial attributes in photos with small local adversarial perturbations.")


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return error_response(err.status, err.message, err.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))


@api.exception_handler(Exception)
async def _unexpected(_: Request, err: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(err).__name__}: {err}")


UPLOAD = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


def decode(data: bytes, max_pixels: int) -> Photo:
    """Upload bytes -> Photo, or ApiError 413 (too many pixels) / 415 (an animation or a multi-page file,
    not a still photo) / 422 (not a readable image)."""
    if not data:
        raise ApiError(422, "empty upload: send a photo")
    try:
        photo = read_photo(data, max_pixels=max_pixels)  # the pixel limit is checked on the header
    except PhotoTooLarge as err:
        raise ApiError(413, str(err)) from err
    except PhotoUnsupported as err:
        raise ApiError(415, str(err)) from err
    except PhotoError as err:
        raise ApiError(422, str(err)) from err
    if photo.format == "MPO":  # multi-picture JPEG (phones): the first picture, answered as JPEG
        photo.format = "JPEG"
    return photo


def encode(photo: Photo, rgb: np.ndarray) -> tuple[bytes, str]:
    """Protected pixels in the input's format, with no metadata -> (bytes, media type)."""
    data = write_photo(photo, rgb)
    return data, MEDIA_TYPES[photo.format if photo.format in FORMATS else "PNG"]


def readable_predictions(record: dict[str, Any], attributes: dict[str, list[str]],
                         model: str = "predicted") -> dict[str, Any]:
    """Class indices -> class names, and which attributes the protection changed.
    ``model``: "predicted" (the surrogate) or "target" (the audit model)."""
    def names(pred: dict[str, int]) -> dict[str, str]:
        return {k: attributes[k][v] if k in attributes else str(v) for k, v in pred.items()}
    before, after = record[f"{model}_before"], record[f"{model}_after"]
    return {"before": names(before), "after": names(after),
            "changed": sorted(k for k in before if before[k] != after.get(k))}


async def _awaited(response: Any) -> Any:
    """A DeploymentResponse as a coroutine, for ``asyncio.wait_for``. (Defined before ``Ingress``:
    ``serve.ingress`` serialises the class when it is decorated.)"""
    return await response


def replica_died(err: BaseException) -> bool:
    """Whether a model call failed because its replica died or became unreachable (worth one retry
    elsewhere): Ray's ``RayActorError`` (``ActorDiedError``, ``ActorUnavailableError``), Serve's
    ``ReplicaUnavailableError``, or either as the cause of a wrapping error. Never overload
    (``BackPressureError``) and never an error raised by the model's own code."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, BackPressureError):
            return False
        if isinstance(err, REPLICA_GONE):
            return True
        err = getattr(err, "cause", None) or err.__cause__
        seen += 1
    return False


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """HTTP front: validates uploads, calls ``ProtectorModel``, answers images or JSON."""

    def __init__(self, model: DeploymentHandle, max_upload_bytes: int, max_pixels: int,
                 request_timeout_s: float) -> None:
        self.model, self.max_upload_bytes = model, max_upload_bytes
        self.max_pixels, self.request_timeout_s = max_pixels, request_timeout_s
        self.page = (SERVING_DIR / "page.html").read_text()
        self._facts: dict[str, Any] | None = None
        # model calls sent a second time because their replica died, and how many of those succeeded
        self.retries: dict[str, Any] = {"retried": 0, "retried_ok": 0, "last_cause": None}

    async def _model_facts(self) -> dict[str, Any]:
        """What /analyze reports of the model (attributes, surrogate, audit model): the same on every
        replica of one export, so the replica is asked once, not on every request."""
        if self._facts is None:
            info, _ = await self._call_model("info")
            self._facts = {k: info[k] for k in ("attributes", "surrogate", "target")}
        return self._facts

    async def _upload(self, request: Request) -> bytes:
        """The photo bytes: multipart field ``file``, or the raw body. 413 past the size limit,
        checked on Content-Length before anything is read."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_upload_bytes + 64 * 1024:
            raise ApiError(413, f"upload of {length} bytes is over the limit of {self.max_upload_bytes} bytes")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form(max_files=1, max_fields=4) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise ApiError(422, "send the photo as the multipart field 'file'")
                data = await upload.read(self.max_upload_bytes + 1)
        else:
            data = await request.body()
        if len(data) > self.max_upload_bytes:
            raise ApiError(413, f"upload is over the limit of {self.max_upload_bytes} bytes")
        return data

    async def _call_model(self, method: str, *args: Any, retry: bool = True) -> tuple[Any, int]:
        """Call the model -> (result, number of retries: 0 or 1). A call whose replica died is sent once
        more (``retry``), to another replica or the restarted one, within the same ``request_timeout_s``.
        Overload answers 503 at once; a second death, or any other failure, 503; the time limit, 504.
        Never a hang."""
        deadline = time.monotonic() + self.request_timeout_s
        for attempt in (0, 1):
            response = getattr(self.model, method).remote(*args)
            try:
                result = await asyncio.wait_for(_awaited(response), max(deadline - time.monotonic(), 0.001))
            except BackPressureError as err:
                raise ApiError(503, "the service is at capacity; retry shortly", {"Retry-After": "1"}) from err
            except asyncio.TimeoutError as err:
                response.cancel()
                raise ApiError(504, f"protection took longer than {self.request_timeout_s} s") from err
            except Exception as err:  # noqa: BLE001 - replica died or is restarting, or another failure
                if retry and attempt == 0 and replica_died(err):
                    self.retries["retried"] += 1
                    self.retries["last_cause"] = type(err).__name__
                    logger.warning("model.%s: replica died (%s); retrying once", method, type(err).__name__)
                    continue
                again = " after one retry" if attempt else ""
                raise ApiError(503, f"model replica unavailable{again} ({type(err).__name__}: {str(err)[:300]}); "
                               "retry shortly", {"Retry-After": "1"}) from err
            if attempt:
                self.retries["retried_ok"] += 1
            return result, attempt
        raise AssertionError("unreachable")

    async def _protect(self, request: Request, strength: Strength) -> tuple[Photo, dict[str, Any], bytes, str]:
        data = await self._upload(request)
        photo = await asyncio.to_thread(decode, data, self.max_pixels)
        result, retried = await self._call_model("protect", photo.rgb, strength)
        result["retried"] = retried
        if "error" in result:
            raise ApiError(500, f"protection failed: {result['error']}")
        if not result["faces"]:
            result["rgb"] = photo.rgb  # no face: the very pixels that came in
        encoded, media_type = await asyncio.to_thread(encode, photo, result["rgb"])
        return photo, result, encoded, media_type

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page_(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when a model replica answers (loaded and warmed up); 503 otherwise (not retried: a probe
        should see a dead replica). ``ingress``: this ingress replica's retry counts."""
        info, _ = await self._call_model("info", retry=False)
        return JSONResponse({"status": "ok", **info, "ingress": dict(self.retries)})

    @api.post("/protect", openapi_extra=UPLOAD,
              responses={200: {"content": {"image/*": {}}, "description": "the protected photo"}})
    async def protect(self, request: Request, format: Literal["image", "json"] = "image",
                      strength: Strength = "standard") -> Response:
        """Protected photo in the input's format; per-face records in the ``X-Faces`` header
        (``?format=json``: one JSON object with the image in base64). ``X-Retried: 1`` when the model
        call was sent a second time because its replica died. ``strength``: the preset (light | standard
        | strong, docs/design.md)."""
        photo, result, encoded, media_type = await self._protect(request, strength)
        summary = {"status": "protected" if result["faces"] else "no_face", "faces": result["faces"]}
        retried = {"X-Retried": str(result["retried"])}
        if format == "json":
            return JSONResponse({**summary, "media_type": media_type, "width": photo.rgb.shape[1],
                                 "height": photo.rgb.shape[0], "batch_size": result["batch_size"],
                                 "image_base64": base64.b64encode(encoded).decode()}, headers=retried)
        return Response(encoded, media_type=media_type, headers={
            "X-Faces": json.dumps(summary), "X-Batch-Size": str(result["batch_size"]), **retried})

    @api.post("/analyze", openapi_extra=UPLOAD)
    async def analyze(self, request: Request, image: bool = False, strength: Strength = "standard") -> JSONResponse:
        """Predictions per face before and after protection, of the surrogate and of the export's audit
        model (a target the protector never attacked), if it holds one (``?image=true`` adds the
        protected photo in base64)."""
        t0 = time.perf_counter()
        photo, result, encoded, media_type = await self._protect(request, strength)
        info = await self._model_facts()
        faces = [{"box": f["box"], "region": f["region"], "detected": f["detected"], "score": f["score"],
                  "path": f["path"], "surrogate": readable_predictions(f, info["attributes"]),
                  **({"target": readable_predictions(f, info["attributes"], "target")} if f["target_before"] else {})}
                 for f in result["faces"]]
        body = {"status": "protected" if faces else "no_face", "faces": faces,
                "surrogate": info["surrogate"], "target": info["target"], "attributes": info["attributes"],
                "width": photo.rgb.shape[1], "height": photo.rgb.shape[0],
                "strength": strength, "batch_size": result["batch_size"],
                "ms": round(1000 * (time.perf_counter() - t0), 1)}
        if image:
            body.update(media_type=media_type, image_base64=base64.b64encode(encoded).decode())
        return JSONResponse(body, headers={"X-Retried": str(result["retried"])})


# ---------------------------------------------------------------------------------------- building

def build_app(settings: Settings, options: dict[str, dict[str, Any]] | None = None) -> serve.Application:
    """The application graph; ``options`` per deployment name (as in the config's ``deployments``)."""
    options = options or {}
    model = ProtectorModel.options(**options.get("ProtectorModel", {})).bind(
        settings.model, settings.mlflow_tracking_uri, settings.max_batch_size, settings.batch_wait_timeout_s)
    return Ingress.options(**options.get("Ingress", {})).bind(
        model, settings.max_upload_bytes, settings.max_pixels, settings.request_timeout_s)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``import_path`` of ``serving/config.yaml``: Serve applies the file's ``deployments`` itself."""
    return build_app(Settings(**args))


def from_config(path: str | Path = CONFIG_PATH, args: dict[str, Any] | None = None,
                options: dict[str, dict[str, Any]] | None = None) -> tuple[serve.Application, dict[str, Any]]:
    """The first application of a Serve config file, with ``args`` and per-deployment ``options``
    overriding the file's -> (application, its entry with the merged args and deployments)."""
    entry = yaml.safe_load(Path(path).read_text())["applications"][0]
    entry["args"] = {**entry.get("args", {}), **(args or {})}
    merged = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in entry.get("deployments", [])}
    for name, extra in (options or {}).items():
        merged.setdefault(name, {}).update(extra)
        if "num_replicas" in extra:
            merged[name].pop("autoscaling_config", None)
    entry["deployments"] = [{"name": k, **v} for k, v in merged.items()]
    return build_app(Settings(**entry["args"]), merged), entry
