"""The one source of truth for settings: ``params.yaml`` at the project root.

Profiles (``profiles/<name>.yaml``) are partial overrides merged onto it; ``apply_profile`` writes
the merged result back to ``params.yaml`` so that DVC sees exactly the settings a run used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read the params file (relative paths resolve against the current directory)."""
    with open(path) as f:
        return yaml.safe_load(f)


def with_tuned(params: dict[str, Any], best: str | Path | None) -> dict[str, Any]:
    """``params`` with the tune stage's choice (its ``best.json``: overrides of params' own sections,
    ``ldman.loss_weights`` and ``protector.refine``'s step schedule) merged in; unchanged when ``best`` is None."""
    if not best:
        return params
    import json

    return deep_merge(params, json.loads(Path(best).read_text()))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_profile(profile: str, root: str | Path = ".") -> dict[str, Any]:
    """Merge ``profiles/<profile>.yaml`` onto ``params.yaml`` in ``root`` and write it back."""
    root = Path(root)
    params = load_params(root / "params.yaml")
    override = load_params(root / "profiles" / f"{profile}.yaml") or {}
    merged = deep_merge(params, override)
    merged["profile"] = profile
    with open(root / "params.yaml", "w") as f:
        yaml.safe_dump(merged, f, sort_keys=False)
    return merged


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Apply a params profile to params.yaml")
    parser.add_argument("profile", help="name of a file in profiles/, e.g. quick")
    args = parser.parse_args()
    apply_profile(args.profile)
    print(f"params.yaml now uses the '{args.profile}' profile")


if __name__ == "__main__":
    main()
