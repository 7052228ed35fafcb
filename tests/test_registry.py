"""The promotion gate, both ways, against a real (sqlite) MLflow registry."""

import mlflow
import pytest
from mlflow import MlflowClient

from invisible_face.evaluate.registry import ALIAS, gate, register_protector

GATES = {"protector_mosr_min": 0.95, "protector_ssim_min": 0.94}


def figures(mosr: float, ssim: float, hpn: float) -> dict[str, float]:
    return {"protector_mosr": mosr, "protector_ssim": ssim, "protector_h_pn": hpn}


def test_gate_reasons():
    assert gate(figures(0.99, 0.96, 0.9), GATES, None) == []
    assert gate(figures(0.99, 0.96, 0.9), GATES, 0.9) == []  # an equal re-run may take over
    reasons = gate(figures(0.90, 0.93, 0.9), GATES, 0.95)
    assert len(reasons) == 3 and any("mosr" in r for r in reasons) and any("ssim" in r for r in reasons)
    assert any("champion" in r for r in reasons)
    assert "missing" in gate({}, {"protector_mosr_min": 0.5}, None)[0]


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from invisible_face.tracking import setup_mlflow

    setup_mlflow("register", root=tmp_path)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def test_promotion_both_ways(registry, tiny_protector):
    first = register_protector(tiny_protector, "if-test", figures(0.99, 0.96, 0.80), GATES)
    assert first["promoted"] and str(registry.get_model_version_by_alias("if-test", ALIAS).version) == "1"
    worse = register_protector(tiny_protector, "if-test", figures(0.99, 0.96, 0.70), GATES)
    assert not worse["promoted"] and "below the champion" in worse["reasons"][0]
    failing = register_protector(tiny_protector, "if-test", figures(0.50, 0.99, 0.95), GATES)
    assert not failing["promoted"]
    assert str(registry.get_model_version_by_alias("if-test", ALIAS).version) == "1"
    assert "below the gate" in registry.get_model_version("if-test", failing["version"]).tags["not_promoted_reason"]
    better = register_protector(tiny_protector, "if-test", figures(0.99, 0.97, 0.85), GATES)
    assert better["promoted"] and (str(registry.get_model_version_by_alias("if-test", ALIAS).version)
                                   == str(better["version"]))
    # the champion loads through the same safe loader as a local export
    from invisible_face.protect.protector import FORMAT_VERSION, Protector

    folder = mlflow.artifacts.download_artifacts(f"models:/if-test@{ALIAS}")
    assert Protector.load(f"{folder}/protector").config["format_version"] == FORMAT_VERSION
