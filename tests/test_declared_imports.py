"""Every third-party module the shipped code imports belongs to a distribution pyproject.toml declares."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["platform/precise", "jobs", "serve", "benchmarks", "scripts"]
FIRST_PARTY = {"precise", "serve", "jobs", "benchmarks", "_common"}


def _imports() -> dict[str, str]:
    found: dict[str, str] = {}
    for top in SHIPPED:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _local(module: str) -> bool:
    # scripts import their sibling modules (benchmarks/_stack.py, jobs/_common.py)
    return any((ROOT / top / f"{module}.py").exists() for top in SHIPPED)


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[<>=~! ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_direct_import_is_declared() -> None:
    owners = metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for module, where in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module in FIRST_PARTY or _local(module):
            continue
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if not dists & declared:
            missing[module] = (where, sorted(dists))
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"
