"""The Serve application's settings: ``serving/config.yaml`` (the one source of truth for serving),
read and merged with the overrides of tests and benchmarks, and the ``Settings`` the deployments are
built from (its ``args``). The launcher (``serving/app.py``) turns them into the application.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVING_DIR = Path(__file__).resolve().parent
CONFIG_PATH = SERVING_DIR / "config.yaml"


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


def read_config(path: str | Path = CONFIG_PATH, args: dict[str, Any] | None = None,
                options: dict[str, dict[str, Any]] | None = None
                ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The first application of a Serve config file, with ``args`` and per-deployment ``options``
    overriding the file's -> (its entry with the merged args and deployments, the merged options
    by deployment name). A replica count given in ``options`` replaces the file's autoscaling."""
    entry = yaml.safe_load(Path(path).read_text())["applications"][0]
    entry["args"] = {**entry.get("args", {}), **(args or {})}
    merged = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in entry.get("deployments", [])}
    for name, extra in (options or {}).items():
        merged.setdefault(name, {}).update(extra)
        if "num_replicas" in extra:
            merged[name].pop("autoscaling_config", None)
    entry["deployments"] = [{"name": k, **v} for k, v in merged.items()]
    return entry, merged
