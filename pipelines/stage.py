"""Run one dvc.yaml stage's ``cmd`` unchanged inside a pipeline container (Kubeflow Pipelines).

Kubeflow hands each task its input artifacts at paths of its own choosing and collects outputs
from other paths, while a stage reads and writes fixed project paths (``artifacts/<stage>/...``).
This runner only bridges the two: it writes the stage's params into params.yaml, links each input
artifact to the path the stage expects, runs the stage's cmd through the shell exactly as
``dvc repro`` would, and copies the stage's outs to the output artifact paths. It holds no stage
logic and imports nothing from kfp, so the image needs no Kubeflow code to run a task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def set_params(path: Path, values: dict[str, Any]) -> None:
    """Write dotted ``values`` (dvc.yaml ``params`` keys, e.g. ``data.image_dir``) into ``path``."""
    params = yaml.safe_load(path.read_text()) if path.exists() else {}
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def place(src: str, rel: str) -> None:
    """Make the artifact at ``src`` visible at the project path ``rel`` (a symlink: no copy)."""
    target = Path(rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(Path(src).resolve(), target_is_directory=Path(src).is_dir())


def collect(rel: str, dst: str) -> None:
    """Copy the stage's out ``rel`` (file or folder) to the output artifact path ``dst``."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if Path(rel).is_dir():
        shutil.copytree(rel, dst, dirs_exist_ok=True)
    else:
        shutil.copyfile(rel, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="{}", help="JSON {dotted params key: value} of the stage")
    parser.add_argument("--input", nargs=2, action="append", default=[], metavar=("REL", "PATH"))
    parser.add_argument("--output", nargs=2, action="append", default=[], metavar=("REL", "PATH"))
    parser.add_argument("--cmd", required=True, help="the stage's cmd from dvc.yaml")
    args = parser.parse_args(argv)

    set_params(Path("params.yaml"), json.loads(args.params))
    for rel, src in args.input:
        place(src, rel)
    print(f"+ {args.cmd}", flush=True)
    code = subprocess.run(args.cmd, shell=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}).returncode
    if code:
        return code
    for rel, dst in args.output:
        collect(rel, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
