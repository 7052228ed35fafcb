"""The HTTP ingress: ``Ingress`` (FastAPI on Ray Serve) with its routes and page.

``/`` (the page), ``/healthz``, ``/protect`` and ``/analyze``. It checks and decodes uploads, calls the
model replica (``serving/replica.py``), encodes the answer. Bad input never reaches the model: size
limit (413), pixel limit and decompression bombs (413), content sniffed from the bytes by
``read_photo`` (422 when it is not a readable image, 415 when it is an animation or a multi-page
file: see ``photo_io.read_photo``); every error is JSON (``serving/errors.py``).

A model replica that dies under a call (SIGKILL, out-of-memory kill, node loss: Ray's
``RayActorError`` family) costs no request: ``/protect`` and ``/analyze`` are idempotent, so the
ingress sends the call once more, to another replica or to the one Serve starts in its place, and
answers 503 only when that second try fails too. The retried answer carries ``X-Retried: 1``;
``/healthz`` counts retries (``ingress.retried``, ``ingress.retried_ok``). Overload is not retried:
a full queue (Serve's ``BackPressureError``) answers 503 with ``Retry-After: 1`` at once.
"""

import asyncio
import base64
import json
import logging
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from invisible_face.protect.photo_io import (
    FORMATS,
    Photo,
    PhotoError,
    PhotoTooLarge,
    PhotoUnsupported,
    read_photo,
    write_photo,
)
from serving.errors import ApiError, add_error_handlers, replica_died
from serving.settings import SERVING_DIR

MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
               "TIFF": "image/tiff"}
logger = logging.getLogger("ray.serve")
Strength = Literal["light", "standard", "strong"]  # the export's presets (params.yaml, protector.strengths)

api = FastAPI(title="Invisible-Face", version="0.1.0",
              description="Protects facial attributes in photos with small local adversarial perturbations.")
add_error_handlers(api)


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
