"""dvc.yaml as a DAG: the stages, what each produces and which stages it waits for.

The Kubeflow pipeline, the KubeRay manifests and their tests all read the DAG through here, so
dvc.yaml stays its only definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def paths(entries: list[str | dict] | None) -> list[str]:
    """dvc.yaml ``outs``/``metrics``/``plots``/``deps`` entries -> their paths."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def stages(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages, in dvc.yaml's order."""
    return load_yaml(root / "dvc.yaml")["stages"]


def produced(stage: dict[str, Any]) -> list[str]:
    """Everything a stage writes: outs, metrics and plots (a later stage may depend on any)."""
    return paths(stage.get("outs")) + paths(stage.get("metrics")) + paths(stage.get("plots"))


def sources(root: Path = ROOT) -> dict[str, str]:
    """DVC-tracked inputs that no stage produces: {path: its .dvc file} (``data`` -> data.dvc)."""
    return {out["path"]: f.name for f in sorted(root.glob("*.dvc")) if f.is_file() for out in load_yaml(f)["outs"]}


def producers(all_stages: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{path: the stage that produces it}."""
    return {path: name for name, stage in all_stages.items() for path in produced(stage)}


def upstream(all_stages: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """{stage: the stages whose outputs it lists in deps}: the edges of ``dvc dag``."""
    made_by = producers(all_stages)
    return {name: sorted({made_by[d] for d in paths(stage.get("deps")) if d in made_by})
            for name, stage in all_stages.items()}


def order(all_stages: dict[str, dict[str, Any]]) -> list[str]:
    """The stages in a dependency order (each after every stage it depends on), as close to
    dvc.yaml's own order as the edges allow."""
    edges, done = upstream(all_stages), []
    pending = list(all_stages)
    while pending:
        ready = next((n for n in pending if set(edges[n]) <= set(done)), None)
        if ready is None:
            raise ValueError(f"dvc.yaml has a cycle among {pending}")
        done.append(ready)
        pending.remove(ready)
    return done


def stage_params(stage: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """{dotted key listed in the stage's ``params``: its value in params.yaml}."""
    values = {}
    for key in stage.get("params", []):
        node = params
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values
