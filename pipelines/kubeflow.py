"""dvc.yaml as a Kubeflow Pipelines v2 pipeline: ``python -m pipelines.kubeflow --out pipeline.yaml``.

One container component per dvc.yaml stage, generated from dvc.yaml and params.yaml (never a
hand-copied stage list, so the two DAGs cannot drift): each runs the stage's own ``cmd`` in the
project image (via ``pipelines.stage``, which only maps artifacts to project paths), takes the
outputs of the stages it depends on as typed input artifacts and publishes its outs / metrics /
plots as typed output artifacts (Model, Dataset, Metrics). Kubeflow then orders tasks by those
artifacts exactly as DVC orders stages by deps/outs. The stage's params.yaml values are passed as
the ``params`` input, so each task's inputs record the settings it ran with. DVC-tracked sources
(``data`` from data.dvc) come from a ``dvc pull`` task.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from pipelines import dag

IMAGE = "invisible-face:latest"
PIPELINE_NAME = "invisible-face"
MODEL_SUFFIXES = (".pt", ".safetensors")


def artifact_name(path: str) -> str:
    """A project path -> a component input/output name (``artifacts/x/metrics.json`` -> ``metrics_json``)."""
    return Path(path).name.replace(".", "_").replace("-", "_")


def artifact_type(path: str, stage: dict[str, Any]) -> type:
    """Metrics for dvc metrics; Model for weights and the files that describe them; else Dataset."""
    if path in dag.paths(stage.get("metrics")):
        return dsl.Metrics
    model_stems = {Path(p).stem for p in dag.produced(stage) if p.endswith(MODEL_SUFFIXES)}
    if path.endswith(MODEL_SUFFIXES) or Path(path).name == "models" or Path(path).stem in model_stems:
        return dsl.Model
    return dsl.Dataset


def container_component(name: str, cmd: str, inputs: dict[str, tuple[str, type]],
                        outputs: dict[str, tuple[str, type]], image: str) -> Callable:
    """A container component named ``name`` that runs ``cmd`` with ``inputs``/``outputs``
    ({argument name: (project path, artifact type)}) and a ``params`` JSON string input.

    kfp builds components from a function's signature, so the signature is generated here."""
    signature = inspect.Signature(
        [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)]
        + [inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=dsl.Input[kind])
           for arg, (_, kind) in inputs.items()]
        + [inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[kind])
           for arg, (_, kind) in outputs.items()])

    def spec(params: Any, *artifacts: Any) -> dsl.ContainerSpec:
        args: list[Any] = ["--params", params]
        for (arg, (path, _)), artifact in zip([*inputs.items(), *outputs.items()], artifacts):
            args += ["--input" if arg in inputs else "--output", path, artifact.path]
        return dsl.ContainerSpec(image=image, command=["python", "-m", "pipelines.stage"],
                                 args=[*args, "--cmd", cmd])

    spec.__name__ = spec.__qualname__ = name
    spec.__signature__ = signature  # type: ignore[attr-defined]
    spec.__doc__ = f"Runs `{cmd}` (dvc.yaml) in the project image."
    return dsl.container_component(spec)


def build_pipeline(root: Path = dag.ROOT, image: str = IMAGE,
                   env: dict[str, str] | None = None) -> Callable:
    """The pipeline for dvc.yaml/params.yaml under ``root``; ``env`` is set on every task
    (e.g. MLFLOW_TRACKING_URI for a shared tracking server, RAY_ADDRESS for a shared Ray cluster)."""
    stages, params = dag.stages(root), dag.load_yaml(root / "params.yaml")
    pulls = {path: f"pull-{path}" for path in dag.sources(root)}
    made_by = dag.producers(stages) | pulls
    components: dict[str, Callable] = {}
    wiring: dict[str, dict[str, str]] = {}  # task -> {input argument: project path it receives}
    for path, dvcfile in dag.sources(root).items():
        components[pulls[path]] = container_component(
            f"pull_{path}", f"dvc pull {dvcfile}", {}, {artifact_name(path): (path, dsl.Dataset)}, image)
        wiring[pulls[path]] = {}
    for name, stage in stages.items():
        wiring[name] = {(artifact_name(d) if d in pulls else f"{made_by[d]}_{artifact_name(d)}"): d
                        for d in dag.paths(stage.get("deps")) if d in made_by}
        inputs = {arg: (d, artifact_type(d, stages[made_by[d]]) if d not in pulls else dsl.Dataset)
                  for arg, d in wiring[name].items()}
        outputs = {artifact_name(p): (p, artifact_type(p, stage)) for p in dag.produced(stage)}
        assert len(outputs) == len(dag.produced(stage)), f"{name}: two outputs share a file name"
        components[name] = container_component(name, stage["cmd"], inputs, outputs, image)

    @dsl.pipeline(name=PIPELINE_NAME, description="The Invisible-Face DVC pipeline (dvc.yaml), stage for stage.")
    def pipeline():  # no return annotation: kfp would read one as an output
        tasks: dict[str, Any] = {}
        for name in [*pulls.values(), *dag.order(stages)]:
            task = components[name](
                params=json.dumps(dag.stage_params(stages.get(name, {}), params), sort_keys=True),
                **{arg: tasks[made_by[d]].outputs[artifact_name(d)] for arg, d in wiring[name].items()})
            for key, value in (env or {}).items():
                task.set_env_variable(key, value)
            tasks[name] = task

    return pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="pipeline.yaml", help="compiled pipeline (upload to Kubeflow)")
    parser.add_argument("--image", default=IMAGE, help="the project image (see Dockerfile)")
    parser.add_argument("--env", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="environment variable for every task, e.g. MLFLOW_TRACKING_URI http://mlflow:5000")
    args = parser.parse_args(argv)
    compiler.Compiler().compile(build_pipeline(image=args.image, env=dict(args.env)), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
