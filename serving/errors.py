"""What the HTTP API answers when something fails: every error is a JSON object
``{"error": message, "status": code}`` (``ApiError`` for the ingress's own, and FastAPI's HTTP,
validation and unexpected errors mapped to the same shape by ``add_error_handlers``), and which model
failures mean a dead replica, worth one retry elsewhere (``replica_died``).
"""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve import exceptions as serve_exceptions
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

# a call's replica died or cannot be reached (ReplicaUnavailableError: Serve's own, where this Ray has it)
REPLICA_GONE = (RayActorError, *[c for c in [getattr(serve_exceptions, "ReplicaUnavailableError", None)] if c])


class ApiError(Exception):
    """An error answered as JSON with its HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return error_response(err.status, err.message, err.headers)


async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail))


async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))


async def _unexpected(_: Request, err: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(err).__name__}: {err}")


def add_error_handlers(api: FastAPI) -> None:
    """Answer every error of ``api`` as ``{"error", "status"}``: an ``ApiError`` with its status and
    headers, an HTTP error with its own status, invalid parameters 422, anything else 500."""
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(Exception, _unexpected)


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
