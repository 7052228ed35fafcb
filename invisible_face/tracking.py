"""MLflow set-up shared by every stage: one sqlite store and artifact folder in the project.

Tracking and registry URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlflow.db``
(MLflow 3 has no file store by default). Artifacts of experiments created here go to
``<root>/mlruns``. ``root`` is the working directory, which is the project root under ``dvc repro``
(and the temporary copy's root in the end-to-end test). Every run is tagged with the data version
(md5 of ``data.dvc``) and git commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import yaml


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{((root or Path.cwd()) / 'mlflow.db').resolve()}"


def data_version(root: Path | None = None) -> str:
    """md5 of the data directory as recorded in ``data.dvc`` ("unknown" when absent)."""
    try:
        outs = yaml.safe_load(((root or Path.cwd()) / "data.dvc").read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError):
        return "unknown"


def git_commit(root: Path | None = None) -> str:
    """Current commit (with ``-dirty`` when the tree has changes), "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_tags(root: Path | None = None) -> dict[str, str]:
    return {"data_version": data_version(root), "git_commit": git_commit(root)}


def setup_mlflow(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the project store and select ``experiment`` (created with its artifact
    location under ``<root>/mlruns``); returns the experiment id."""
    root = root or Path.cwd()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = (root / "mlruns" / experiment).resolve().as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
