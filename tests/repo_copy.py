"""A temporary, self-contained copy of the project for tests that run ``dvc``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from invisible_face.params import PROJECT_ROOT

DVC_ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=DVC_ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def copy_repo(dest: Path) -> Path:
    """Copy the committed and untracked-but-not-ignored files into ``dest`` as a fresh git repo,
    with the DVC remote pointed at the absolute path of the shared remote."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    remote = (PROJECT_ROOT / ".dvc" / (run(["dvc", "remote", "list"], PROJECT_ROOT).stdout.split()[1])).resolve()
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(remote)], dest)
    return dest
