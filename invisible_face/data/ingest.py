"""Ingest a user's own copy of UTKFace as a new DVC version of ``data/``.

Copies the images of a folder (searched recursively) into ``data/utkface/`` and runs ``dvc add
data``, which rewrites ``data.dvc``. Nothing is validated here: the validate stage does that, so
a bad file is reported there like any other.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def ingest_folder(source: str | Path, repo: str | Path = ".", replace: bool = False) -> int:
    """Copy images from ``source`` into ``<repo>/data/utkface`` and ``dvc add`` it; return the count."""
    source, repo = Path(source), Path(repo)
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images under {source}")
    target = repo / "data" / "utkface"
    if replace and target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in files]
    clashes = {n for n in names if names.count(n) > 1}
    if clashes:
        raise ValueError(f"{len(clashes)} file names occur twice under {source}, e.g. {sorted(clashes)[0]}")
    for path in files:
        shutil.copy2(path, target / path.name)
    subprocess.run(["dvc", "add", "data"], cwd=repo, check=True)
    return len(files)
