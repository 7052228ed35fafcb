""".gitignore keeps DVC's cached outs out of git and lets git carry the small ``cache: false`` files.

DVC stores cached outs (models, npz, large tables, output folders) in its cache and refuses an out
that git tracks; ``cache: false`` outs, metrics and plots are not cached, so git is where they live
(``dvc metrics diff`` / ``dvc plots diff`` compare them across commits). Each case builds a scratch
git repository with the project's .gitignore and files at every path dvc.yaml declares.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
MAX_BYTES = 1 << 20  # images over 1 MB and models do not go into git


def declared() -> tuple[list[str], list[str]]:
    """(paths of ``cache: false`` outs/metrics/plots, paths of cached outs/metrics/plots) in dvc.yaml."""
    uncached, cached = [], []
    for stage in STAGES.values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                (uncached if (options or {}).get("cache", True) is False else cached).append(path)
    return uncached, cached


def is_folder(path: str) -> bool:
    """A folder out: no file suffix (``artifacts/classifiers/models``, ``.../history``)."""
    return "." not in Path(path).name


def files_for(path: str) -> list[str]:
    """Files that stand for an out in the scratch repository (a table, JSON and image inside a folder out)."""
    return [f"{path}/a.csv", f"{path}/b.json", f"{path}/c.png"] if is_folder(path) else [path]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A git repository with the project's .gitignore and a file at every declared path."""
    repo = tmp_path_factory.mktemp("gitignore")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shutil.copyfile(ROOT / ".gitignore", repo / ".gitignore")
    uncached, cached = declared()
    for path in uncached + cached:
        for f in files_for(path) + ([f"{path}/surrogate.pt"] if is_folder(path) else []):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / f).write_text("x")
    # what DVC writes next to cached outs when it runs
    (repo / "artifacts/train/.gitignore").write_text("/generator.pt\n")
    return repo


def ignored(repo: Path, paths: list[str]) -> set[str]:
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo, capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    return set(out.stdout.split())


def test_cache_false_files_are_not_ignored(scratch: Path) -> None:
    uncached, _ = declared()
    assert "artifacts/train/metrics.json" in uncached and "artifacts/evaluate/transfer.csv" in uncached
    paths = [f for p in uncached for f in files_for(p)]
    assert not ignored(scratch, paths), "cache: false files that git would ignore"


def test_cached_outs_are_ignored(scratch: Path) -> None:
    _, cached = declared()
    assert "artifacts/train/generator.pt" in cached and "artifacts/classifiers/models" in cached
    paths = [f for p in cached for f in files_for(p)] + ["artifacts/classifiers/models/surrogate.pt"]
    assert ignored(scratch, paths) == set(paths)


def test_git_would_add_exactly_the_cache_false_files(scratch: Path) -> None:
    """``git add artifacts`` picks up the declared small files and nothing else."""
    uncached, _ = declared()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "artifacts"], cwd=scratch,
                            capture_output=True, text=True, check=True).stdout
    untracked = {line[3:] for line in status.splitlines()}
    assert untracked == {f for p in uncached for f in files_for(p)}  # no model, even inside a plots folder


def test_gitignore_lists_no_stale_exception() -> None:
    """Every ``!/artifacts/...`` exception is a ``cache: false`` path of today's dvc.yaml."""
    uncached, _ = declared()
    allowed = {f"!/{p}/**" if is_folder(p) else f"!/{p}" for p in uncached} | {"!/artifacts/**/"}
    exceptions = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                  if line.startswith("!/artifacts")}
    assert exceptions <= allowed, sorted(exceptions - allowed)


def test_cache_false_files_are_small() -> None:
    """The sizes dvc.lock records for the committed files stay under 1 MB (no large images, no models)."""
    lock = ROOT / "dvc.lock"
    if not lock.exists():
        pytest.skip("no dvc.lock")
    uncached, _ = declared()
    sizes = {out["path"]: out.get("size", 0) for stage in yaml.safe_load(lock.read_text())["stages"].values()
             for out in stage.get("outs", [])}
    large = {p: sizes[p] for p in uncached if sizes.get(p, 0) >= MAX_BYTES}
    assert not large, f"cache: false files over 1 MB (cache them instead): {large}"
