"""MLflow Model Registry: register an exported protector and move the ``champion`` alias to it
only when it passes the quality gates and its H-PN is not below the current champion's.

The registered version's source is the export folder itself (safetensors + JSON), so the Serve
app loads ``models:/<name>@champion`` with the same safe loader as a local export.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

ALIAS = "champion"


def gate(metrics: dict[str, float], gates: dict[str, float], champion_hpn: float | None) -> list[str]:
    """Reasons not to promote (empty: promote). ``gates`` maps ``<metric>_min`` to a lower bound."""
    reasons = []
    for key, bound in gates.items():
        metric = key.removesuffix("_min")
        value = metrics.get(metric)
        if value is None:
            reasons.append(f"{metric} is missing from the evaluation's figures (gate {bound})")
        elif value < bound:
            reasons.append(f"{metric} {value} is below the gate {bound}")
    hpn = metrics.get("protector_h_pn", 0.0)
    if champion_hpn is not None and hpn < champion_hpn:  # a re-run of an equal protector may take over
        reasons.append(f"protector_h_pn {hpn} is below the champion's {champion_hpn}")
    return reasons


def champion_hpn(client: MlflowClient, name: str) -> tuple[str | None, float | None]:
    """(version, H-PN) of the current champion, or (None, None)."""
    try:
        version = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None, None
    return version.version, float(version.tags.get("protector_h_pn", "nan"))


def register_protector(stem: str | Path, name: str, metrics: dict[str, float],
                       gates: dict[str, float]) -> dict[str, Any]:
    """Log the export in a run, create a model version, promote it or record why not."""
    stem = Path(stem)
    client = MlflowClient()
    try:
        client.create_registered_model(name, description="Invisible-Face protector exports (safetensors + JSON)")
    except MlflowException:
        pass  # already registered
    previous, previous_hpn = champion_hpn(client, name)
    reasons = gate(metrics, gates, previous_hpn)
    with mlflow.start_run(run_name="register") as run:
        with tempfile.TemporaryDirectory() as folder:
            for suffix in (".json", ".safetensors"):
                (Path(folder) / f"protector{suffix}").write_bytes(stem.with_suffix(suffix).read_bytes())
            mlflow.log_artifacts(folder, "protector")
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tags = {k: str(v) for k, v in metrics.items()}
        tags["promoted"] = str(not reasons).lower()
        if reasons:
            tags["not_promoted_reason"] = "; ".join(reasons)
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/protector",
                                              run_id=run.info.run_id, tags=tags)
        if not reasons:
            client.set_registered_model_alias(name, ALIAS, version.version)
        mlflow.set_tags({"model_version": version.version, "promoted": tags["promoted"]})
    return {"name": name, "version": int(version.version), "promoted": not reasons, "reasons": reasons,
            "previous_champion": previous, "previous_champion_h_pn": previous_hpn,
            "champion": version.version if not reasons else previous}
