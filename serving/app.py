"""Ray Serve application: the protector behind an HTTP API and a web page. This module launches it:
``serving/config.yaml`` (and the RayService made from it) points Serve at ``app_builder`` here, and
``from_config`` builds the same application from that file for tests and benchmarks.

Two deployments, one file each:

- ``ProtectorModel`` (``serving/replica.py``) loads the export once per replica and protects photos,
  batching concurrent requests on the replica's one torch thread.
- ``Ingress`` (``serving/ingress.py``, FastAPI) checks and decodes uploads, calls the model, encodes
  the answer; a call whose model replica died is sent once more. Its errors are JSON
  (``serving/errors.py``).

Settings come from the application's ``args`` in ``serving/config.yaml`` (the one source of truth,
read and merged by ``serving/settings.py``).
"""

from pathlib import Path
from typing import Any

from ray import serve

from serving.ingress import Ingress
from serving.replica import ProtectorModel
from serving.settings import CONFIG_PATH, Settings, read_config


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
    entry, merged = read_config(path, args, options)
    return build_app(Settings(**entry["args"]), merged), entry
