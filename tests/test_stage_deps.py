"""dvc.yaml knows what each stage runs: every project module a stage's script loads is in its deps.

Each stage's script is imported in a fresh interpreter (``runpy`` under a name other than
``__main__``, so its ``main()`` does not run), and the project files it loaded are read from
``sys.modules``. Imports inside functions (``from invisible_face.x import y`` in a body) run only
when called, so the files' own source is also scanned for them, transitively. Each file found must
be covered by a dep of the stage: the file itself or a folder holding it. Otherwise editing it
leaves stale results that ``dvc status`` calls up to date.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PROJECT_DIRS = ("invisible_face", "components")

# Runs in a fresh interpreter from the repository root: import the script as ``python script.py``
# would (its folder first on sys.path) but without running main(), then print the project files loaded.
PROBE = """
import json, runpy, sys
from pathlib import Path
root, script = Path.cwd().resolve(), Path(sys.argv[1]).resolve()
sys.path[0] = str(script.parent)
sys.path.append(str(root))
runpy.run_path(str(script), run_name="stage_deps_probe")
files = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path:
        path = Path(path).resolve()
        if path.suffix == ".py" and any(path.is_relative_to(root / d) for d in %r):
            files.add(path.relative_to(root).as_posix())
print(json.dumps(sorted(files)))
""" % (PROJECT_DIRS,)


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def stage_script(stage: dict) -> str:
    """The Python script a stage's ``cmd`` runs (``python <script>.py ...``), repository-relative."""
    words = shlex.split(stage["cmd"])
    assert words[0] in ("python", "python3"), f"not a python command: {stage['cmd']}"
    return words[1]


def function_level_imports(path: Path) -> set[str]:
    """Project files imported anywhere in ``path`` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] not in PROJECT_DIRS:
                continue
            parts = name.split(".")
            for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
                if candidate.is_file():
                    found.add(candidate.relative_to(ROOT).as_posix())
            # a package's __init__ runs for any of its submodules
            for i in range(1, len(parts)):
                init = ROOT.joinpath(*parts[:i], "__init__.py")
                if init.is_file():
                    found.add(init.relative_to(ROOT).as_posix())
    return found


def loaded_project_files(script: str) -> set[str]:
    """The project files that importing ``script`` loads, plus those its functions import."""
    probe = subprocess.run([sys.executable, "-c", PROBE, script], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert probe.returncode == 0, f"importing {script} failed:\n{probe.stderr[-3000:]}"
    files = set(json.loads(probe.stdout.strip().splitlines()[-1])) | {script}
    pending = list(files)
    while pending:
        for found in function_level_imports(ROOT / pending.pop()) - files:
            files.add(found)
            pending.append(found)
    return files


def covered(path: str, deps: list[str]) -> bool:
    """Whether a dep is ``path`` itself or a folder above it."""
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_runs_a_component_script() -> None:
    for name, stage in STAGES.items():
        script = stage_script(stage)
        expected = f"components/{name}/main.py"
        assert script == expected, name
        source = (ROOT / script).read_text()
        assert 'if __name__ == "__main__":' in source, f"{script} must not run main() on import"


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """{script: the project files it loads} for every stage's script, probed a few at a time."""
    scripts = sorted({stage_script(stage) for stage in STAGES.values()})
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(zip(scripts, pool.map(loaded_project_files, scripts)))


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_cover_the_code_it_runs(name: str, loaded: dict[str, set[str]]) -> None:
    stage = STAGES[name]
    deps = _paths(stage.get("deps"))
    missing = sorted(f for f in loaded[stage_script(stage)] if not covered(f, deps))
    assert not missing, f"stage {name}: dvc.yaml deps leave out project code it runs: {missing}"


def test_covered() -> None:
    assert covered("invisible_face/data/faces.py", ["invisible_face"])
    assert covered("invisible_face/data/faces.py", ["invisible_face/"])
    assert covered("invisible_face/data/faces.py", ["invisible_face/data/faces.py"])
    assert not covered("invisible_face/data/faces.py", ["invisible_face/dat"])
    assert not covered("invisible_face/data/faces.py", ["invisible"])



def test_byte_code_in_dep_folders_is_dvc_ignored() -> None:
    """Folder deps hash every file in them: the __pycache__ that Python writes beside the sources
    must be in .dvcignore, or importing one more module makes every stage look changed."""
    dvc = shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    pyc = [f"{d}/__pycache__/x.cpython-311.pyc" for d in ("invisible_face", "components/train")]
    out = subprocess.run([dvc, "check-ignore", *pyc], cwd=ROOT, capture_output=True, text=True)
    assert set(out.stdout.split()) == set(pyc), out.stderr
