"""The stage frame (invisible_face.stage): arguments, params, out folder, MLflow runs and metrics.json,
against a real (sqlite) MLflow store in a temporary folder."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from invisible_face.stage import Stage, stage_parser


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A working directory with a params file and its own MLflow store (the one setup_mlflow picks)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 3, "toy": {"steps": 2}}))
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_start_parses_loads_and_makes_the_out_folder(project, capsys):
    parser = stage_parser("toy stage", "artifacts/toy")
    parser.add_argument("--manifest", default="m.csv")
    stage = Stage.start(parser, argv=["--manifest", "other.csv"])
    assert stage.params == {"seed": 3, "toy": {"steps": 2}} and stage.args.manifest == "other.csv"
    assert stage.out == Path("artifacts/toy") and (project / "artifacts" / "toy").is_dir()
    assert stage.experiment is None
    with pytest.raises(RuntimeError, match="experiment"):
        with stage.run("no experiment"):
            pass

    path = stage.write_metrics({"images": 4, "share": 0.5})
    assert json.loads(path.read_text()) == {"images": 4, "share": 0.5} and path == stage.out / "metrics.json"
    assert json.loads(capsys.readouterr().out) == {"images": 4, "share": 0.5}
    stage.write_metrics({"quiet": 1}, show=False)
    assert capsys.readouterr().out == ""


def test_runs_are_tagged_and_log_their_params_and_metrics(project):
    stage = Stage.start(stage_parser(None, "out"), experiment="toy", argv=["--out", "elsewhere"])
    assert stage.out.name == "elsewhere" and stage.experiment_id is not None
    with stage.run("first", params={"toy.steps": 2}, tags={"role": "x"}) as run:
        stage.write_metrics({"n": 3, "best": None, "name": "a", "ok": True}, log=True, show=False)
    with stage.run("second"):
        pass
    client = MlflowClient()
    first = client.get_run(run.info.run_id)
    assert client.get_experiment(first.info.experiment_id).name == "toy"
    assert first.data.params == {"toy.steps": "2"} and first.data.metrics == {"n": 3.0}  # numbers only, no None
    assert first.data.tags["role"] == "x" and {"data_version", "git_commit"} <= set(first.data.tags)
    runs = client.search_runs([stage.experiment_id])
    assert len(runs) == 2 and len({(r.data.tags["git_commit"], r.data.tags["data_version"]) for r in runs}) == 1
