"""The committed KubeRay manifests are what ``python -m pipelines.kuberay`` generates from
serving/config.yaml, dvc.yaml and params.yaml (regenerate them when this fails)."""

from __future__ import annotations

import yaml

from invisible_face.params import PROJECT_ROOT
from pipelines import kuberay


def test_committed_manifests_are_up_to_date() -> None:
    for rel, text in kuberay.render().items():
        path = PROJECT_ROOT / rel
        assert path.exists() and path.read_text() == text, f"{rel} is stale: run python -m pipelines.kuberay"
    assert kuberay.main(["--check"]) == 0


def test_rayservice_serves_the_committed_serve_config() -> None:
    service = yaml.safe_load((PROJECT_ROOT / "serving/kuberay/rayservice.yaml").read_text())
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    committed = yaml.safe_load((PROJECT_ROOT / "serving/config.yaml").read_text())
    assert served["http_options"]["host"] == "0.0.0.0"  # reachable through the Kubernetes Service
    assert served["applications"][0]["args"]["model"].startswith("models:/")
    for app in served["applications"]:
        app["args"]["model"] = next(a for a in committed["applications"] if a["name"] == app["name"])["args"]["model"]
    served["http_options"]["host"] = committed["http_options"]["host"]
    assert served == committed  # nothing else differs


def test_rayjob_runs_the_dvc_pipeline() -> None:
    job = yaml.safe_load((PROJECT_ROOT / "serving/kuberay/rayjob.yaml").read_text())
    assert job["spec"]["entrypoint"].endswith("dvc pull data.dvc && dvc repro")
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert job["metadata"]["annotations"]["invisible-face/stages"].split(",") == list(stages)
