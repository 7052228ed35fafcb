"""Every third-party module the project imports comes from a distribution that pyproject.toml declares
(directly or through the dependencies of a declared one). A package installed by hand makes the suite
pass on one machine and ``pip install -e .`` fail on a fresh one (issue 14: safetensors).

Runtime code (the package, components, serving, pipelines) may use ``dependencies`` only; tests and
benchmarks may also use the ``dev`` extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from invisible_face.params import PROJECT_ROOT

RUNTIME_DIRS = ("invisible_face", "components", "serving", "pipelines")
DEV_DIRS = ("tests", "benchmarks")
LOCAL = {"conftest", "repo_copy"}  # test helpers imported by name (pytest puts tests/ on sys.path)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions that installing ``requirements`` brings: each declared
    one, and recursively what it requires (an ``extra == "x"`` requirement only when x was asked for;
    other environment markers evaluated for this interpreter)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = list(requirements)
    while todo:
        text = todo.pop()
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        name, extras = norm(req.name), frozenset(norm(e) for e in req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # declared but not installed here: counted by name
        for sub in requires:
            try:
                sub_req = Requirement(sub)
            except InvalidRequirement:
                continue
            if sub_req.marker is not None:
                wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
                if not any(sub_req.marker.evaluate(env) for env in wanted):
                    continue
            todo.append(sub)
    return names


def module_providers() -> dict[str, set[str]]:
    """Top-level importable name -> normalised names of the installed distributions providing it
    (``packages_distributions()``, plus top-level modules and packages found in each distribution's
    file list, which it misses when top_level.txt is absent or names only a compiled helper)."""
    providers = {m: {norm(d) for d in ds} for m, ds in metadata.packages_distributions().items()}
    for dist in metadata.distributions():
        name = norm(dist.metadata["Name"] or "")
        for f in dist.files or []:
            if len(f.parts) == 1 and f.suffix in (".py", ".so", ".pyd"):
                providers.setdefault(f.name.split(".")[0], set()).add(name)
            elif len(f.parts) == 2 and f.name == "__init__.py":
                providers.setdefault(f.parts[0], set()).add(name)
    return providers


def imported_modules(folder: Path) -> dict[str, list[str]]:
    """Top-level module name -> 'path:line' of each absolute import under ``folder``."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    return found


def own_modules() -> set[str]:
    """The project's own top-level names: its packages, the folders checked here, the test helpers."""
    return {p.name for p in PROJECT_ROOT.iterdir() if (p / "__init__.py").exists()} | {*RUNTIME_DIRS, *DEV_DIRS, *LOCAL}


def undeclared(project: dict, providers: dict[str, set[str]]) -> list[str]:
    runtime = closure(project.get("dependencies", []))
    dev = runtime | closure(project.get("optional-dependencies", {}).get("dev", []))
    skip = set(sys.stdlib_module_names) | own_modules()
    problems = []
    for folders, allowed, label in ((RUNTIME_DIRS, runtime, "dependencies"), (DEV_DIRS, dev, "dependencies + dev")):
        for folder in folders:
            if not (PROJECT_ROOT / folder).is_dir():
                continue
            for module, where in sorted(imported_modules(PROJECT_ROOT / folder).items()):
                if module in skip or module.startswith("_"):
                    continue
                dists = providers.get(module)
                if dists is None and norm(module) in allowed:
                    continue  # declared under the module's own name, not installed here
                if not dists or not dists & allowed:
                    problems.append(f"{module} (provided by {', '.join(sorted(dists or ['nothing installed']))}) "
                                    f"imported at {', '.join(where[:3])}: not brought by pyproject's {label}")
    return problems


def test_every_import_is_declared():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    problems = undeclared(project, module_providers())
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_the_check_catches_an_undeclared_import():
    """Without safetensors in the dependencies, the protector's import of it is reported."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    without = {**project, "dependencies": [d for d in project["dependencies"]
                                           if norm(Requirement(d).name) != "safetensors"]}
    assert any(p.startswith("safetensors ") for p in undeclared(without, module_providers()))
