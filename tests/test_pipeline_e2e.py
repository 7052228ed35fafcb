"""The whole DAG, ``dvc pull`` + ``dvc repro`` on the quick profile, in a temporary copy; then the
production path: the register stage's champion, served from the copy's MLflow registry by the Serve
app built from serving/config.yaml (the gate, the registry source and the loader checked together)."""

import json
import socket
import sys
from contextlib import contextmanager
from io import BytesIO

import pytest
import requests
from PIL import Image

from repo_copy import copy_repo, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(args: dict):
    """The application of serving/config.yaml with ``args`` overridden, on a free loopback port, in a
    fresh local Ray that is shut down afterwards (later tests start their own)."""
    import ray
    from ray import serve

    from serving.app import from_config

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # Serve's Python API needs no dashboard
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app, _ = from_config(args=args)
        serve.run(app, name="invisible-face", route_prefix="/")  # returns once the replicas are warm
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.e2e
@pytest.mark.timeout(1800)  # the repro alone may take 1200 s: past the suite's default of 900 s
def test_dvc_repro_quick_profile(tmp_path, photos):
    import ray

    ray.shutdown()  # the stages start their own local Ray; two on 2 cores only get in each other's way
    repo = copy_repo(tmp_path / "repo")
    run(["dvc", "pull", "data.dvc"], repo)  # only the dataset: stage outputs are rebuilt
    run([sys.executable, "-m", "invisible_face.params", "quick"], repo)
    run(["dvc", "repro"], repo, timeout=1200)

    validate = json.loads((repo / "artifacts/validate/metrics.json").read_text())
    assert validate["rows_scanned"] == 400
    assert validate["rows_valid"] + validate["rows_quarantined"] + validate["duplicates_collapsed"] == 400
    assert set(validate["split_sizes"]) == {"surrogate_train", "target_train", "val", "test"}
    landmarks = json.loads((repo / "artifacts/landmarks/metrics.json").read_text())
    assert landmarks["images"] == validate["rows_valid"] and landmarks["coverage"] > 0.9

    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status.lower(), status
    shown = run(["dvc", "metrics", "show"], repo).stdout
    assert "rows_valid" in shown and "coverage" in shown

    # register: the quick profile has no gates, so its export must become the champion
    decision = json.loads((repo / "artifacts/register/decision.json").read_text())
    assert decision["promoted"] is True, decision
    from mlflow import MlflowClient

    # the stages' store (invisible_face.tracking: <cwd>/mlflow.db, artifacts under <cwd>/mlruns as
    # absolute file URIs), named explicitly: this process runs from the project, not the copy
    uri = f"sqlite:///{(repo / 'mlflow.db').resolve()}"
    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("invisible-face", "champion")
    assert int(champion.version) == decision["version"]

    # serve: only after the repro (its Ray is gone), overriding only the model source and the store
    with serve_app({"model": "models:/invisible-face@champion", "mlflow_tracking_uri": uri}) as url:
        health = requests.get(url + "/healthz", timeout=60)
        assert health.status_code == 200 and health.json()["warm"] is True, health.text
        photo = (photos / "portrait.jpg").read_bytes()  # one face of about 90 px
        r = requests.post(url + "/protect", files={"file": ("portrait.jpg", photo)}, timeout=300)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text[:500]
        assert Image.open(BytesIO(r.content)).size == Image.open(BytesIO(photo)).size
        faces = json.loads(r.headers["X-Faces"])
        assert faces["status"] == "protected" and len(faces["faces"]) == 1, faces
