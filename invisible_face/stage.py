"""The frame every pipeline stage script shares (``components/<stage>/main.py``, run by ``dvc repro``).

A stage parses ``--params`` and ``--out`` (and arguments of its own), loads the params, makes its out
folder, and, when it tracks its work in MLflow, selects its experiment and opens runs tagged with the
data version and git commit (:mod:`invisible_face.tracking`); it ends by writing ``metrics.json``, the
metrics DVC reads. This module holds that frame once, so a stage script reads as its own steps only::

    parser = stage_parser(__doc__, "artifacts/denoiser")
    parser.add_argument("--manifest", default="artifacts/validate/manifest.csv")
    stage = Stage.start(parser, experiment="denoiser")
    with stage.run("rp", params={...}):
        ...
        stage.write_metrics(final)

The library itself never imports it: a stage is the pipeline's unit, not the method's.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow

from invisible_face.params import load_params
from invisible_face.tracking import run_tags, setup_mlflow


def stage_parser(doc: str | None, out: str, raw: bool = False) -> argparse.ArgumentParser:
    """The arguments every stage takes: ``--params`` (default params.yaml) and ``--out`` (default
    ``out``, the stage's folder under artifacts/); the stage adds its own. ``raw``: ``--help`` keeps
    the docstring's line breaks."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=out)
    return parser


@dataclass
class Stage:
    """One run of a stage: its parsed arguments, the params, its out folder (made), and with
    ``experiment`` the MLflow experiment its runs go to (selected by :meth:`start`)."""

    args: argparse.Namespace
    params: dict[str, Any]
    out: Path
    experiment: str | None = None
    experiment_id: str | None = None

    @classmethod
    def start(cls, parser: argparse.ArgumentParser, experiment: str | None = None,
              argv: list[str] | None = None) -> Stage:
        """Parse ``argv`` (the command line when None), load ``--params``, make ``--out``, and with
        ``experiment`` point MLflow at the project store and select that experiment."""
        args = parser.parse_args(argv)
        params = load_params(args.params)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        experiment_id = setup_mlflow(experiment) if experiment else None
        return cls(args, params, out, experiment, experiment_id)

    @cached_property
    def tags(self) -> dict[str, str]:
        """The tags of every run of this stage (data version, git commit): read once, so the runs of
        one stage and the model files they save carry the same."""
        return run_tags()

    @contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
        """An MLflow run of the stage's experiment named ``name``, tagged with :attr:`tags` and ``tags``,
        with ``params`` logged as it opens."""
        if self.experiment is None:
            raise RuntimeError("Stage.start(..., experiment=...) selects the experiment runs go to")
        with mlflow.start_run(run_name=name, tags={**self.tags, **(tags or {})}) as run:
            if params:
                mlflow.log_params(params)
            yield run

    def write_metrics(self, metrics: dict[str, Any], log: bool = False, show: bool = True) -> Path:
        """``<out>/metrics.json`` (DVC's metrics of the stage), printed unless ``show`` is False; with
        ``log``, its numbers (None left out) also logged to the active MLflow run. -> the file."""
        path = self.out / "metrics.json"
        text = json.dumps(metrics, indent=2)
        path.write_text(text)
        if log:
            mlflow.log_metrics({k: v for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if show:
            print(text)
        return path
