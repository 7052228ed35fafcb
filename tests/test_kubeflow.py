"""The Kubeflow pipeline is dvc.yaml stage for stage: compiled to YAML and compared with dvc.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from invisible_face.params import PROJECT_ROOT

pytest.importorskip("kfp")

STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def _paths(entries) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _lookup(dotted: str):
    node = PARAMS
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    from pipelines.kubeflow import main

    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    main(["--out", str(out), "--image", "registry.example/invisible-face:test",
          "--env", "MLFLOW_TRACKING_URI", "http://mlflow:5000"])
    return yaml.safe_load(out.read_text())


def _args(compiled: dict, task: str) -> list[str]:
    executor = compiled["components"][f"comp-{task}"]["executorLabel"]
    return compiled["deploymentSpec"]["executors"][executor]["container"]["args"]


def _pairs(args: list[str], flag: str) -> list[str]:
    """The project paths given after each ``flag`` (``--input REL PATH``)."""
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_same_tasks_and_edges_as_dvc_yaml(compiled: dict) -> None:
    tasks = compiled["root"]["dag"]["tasks"]
    assert set(tasks) == set(STAGES) | {"pull-data"}
    made_by = {p: name for name, s in STAGES.items()
               for p in _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))}
    made_by["data"] = "pull-data"
    seen: set[str] = {"pull-data"}
    for name, stage in STAGES.items():  # dvc.yaml lists stages in a dependency order: keep it
        expected = {made_by[d] for d in _paths(stage["deps"]) if d in made_by}
        assert set(tasks[name].get("dependentTasks", [])) == expected, name
        assert expected <= seen, f"{name} runs before {expected - seen}"
        seen.add(name)
        for arg, spec in tasks[name]["inputs"].get("artifacts", {}).items():
            assert spec["taskOutputArtifact"]["producerTask"] in expected, (name, arg)


def test_each_task_runs_the_stage_cmd_with_its_deps_and_outs(compiled: dict) -> None:
    for name, stage in STAGES.items():
        args = _args(compiled, name)
        assert args[args.index("--cmd") + 1] == stage["cmd"], name
        container = compiled["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
        assert container["command"] == ["python", "-m", "pipelines.stage"]
        assert container["image"] == "registry.example/invisible-face:test"
        assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in container["env"]
        produced = _paths(stage.get("outs")) + _paths(stage.get("metrics")) + _paths(stage.get("plots"))
        assert _pairs(args, "--output") == produced, name
        made_elsewhere = {p for other in STAGES.values() if other is not stage
                          for p in _paths(other.get("outs")) + _paths(other.get("metrics"))
                          + _paths(other.get("plots"))} | {"data"}
        assert set(_pairs(args, "--input")) == set(_paths(stage["deps"])) & made_elsewhere, name
    pull = _args(compiled, "pull-data")
    assert pull[pull.index("--cmd") + 1] == "dvc pull data.dvc"


def test_artifact_types(compiled: dict) -> None:
    outputs = {name: compiled["components"][f"comp-{name}"]["outputDefinitions"]["artifacts"] for name in STAGES}
    title = lambda stage, art: outputs[stage][art]["artifactType"]["schemaTitle"]  # noqa: E731
    assert title("validate", "manifest_csv") == "system.Dataset"
    assert title("classifiers", "models") == "system.Model"
    assert title("train", "generator_pt") == "system.Model"
    assert title("export", "protector_safetensors") == title("export", "protector_json") == "system.Model"
    assert all(title(name, "metrics_json") == "system.Metrics" for name in STAGES if "metrics_json" in outputs[name])
    assert title("register", "decision_json") == "system.Metrics"


def test_params_recorded_per_stage(compiled: dict) -> None:
    tasks = compiled["root"]["dag"]["tasks"]
    for name, stage in STAGES.items():
        recorded = json.loads(tasks[name]["inputs"]["parameters"]["params"]["runtimeValue"]["constant"])
        assert recorded == {key: _lookup(key) for key in stage.get("params", [])}, name


def test_stage_runner_links_inputs_runs_cmd_and_collects_outputs(tmp_path: Path, monkeypatch) -> None:
    from pipelines.stage import main

    upstream, produced = tmp_path / "upstream.csv", tmp_path / "kfp" / "out" / "copy"
    upstream.write_text("a,b\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "data": {"image_dir": "x", "other": 1}}))
    monkeypatch.chdir(work)
    code = main(["--params", json.dumps({"data.image_dir": "data/utkface", "seed": 3}),
                 "--input", "artifacts/a/in.csv", str(upstream),
                 "--output", "artifacts/b/out", str(produced),
                 "--cmd", "mkdir -p artifacts/b/out && cp artifacts/a/in.csv artifacts/b/out/x.csv"])
    assert code == 0
    assert (produced / "x.csv").read_text() == "a,b\n"
    assert yaml.safe_load((work / "params.yaml").read_text()) == {
        "seed": 3, "data": {"image_dir": "data/utkface", "other": 1}}
    assert main(["--cmd", "exit 3"]) == 3 and os.getcwd() == str(work)
