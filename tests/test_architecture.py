"""Import rules of the one path (DESIGN section 3), read from the source: prediction and serving
never import training code or a Kafka client, the model imports no store, Kafka or HTTP code, every
stage reaches what lives under storage.root through precise.store, and there are no import cycles
inside the package (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "precise"
KAFKA_CLIENTS = ("kafka", "confluent_kafka")
HTTP = ("fastapi", "starlette", "requests", "httpx", "uvicorn", "aiohttp")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(module: str) -> set[str]:
    """Every module `module` imports, anywhere in its source (absolute names)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up `level - 1` packages from this one
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


def internal(module: str) -> set[str]:
    return {name for name in imports(module) if name in MODULES and name != module}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_package_is_found():
    assert {"precise.store.files", "precise.train.recipe", "precise.serving.state", "precise.model.universal"} \
        <= set(MODULES)


@pytest.mark.parametrize("stage", ["precise.predict", "precise.serving"])
def test_prediction_and_serving_import_no_training_and_no_kafka_client(stage):
    for module in [m for m in MODULES if in_package(m, stage)]:
        names = imports(module)
        assert not [n for n in names if in_package(n, "precise.train")], (module, "imports training code")
        assert not [n for n in names if n.split(".")[0] in KAFKA_CLIENTS], (module, "imports a Kafka client")
        assert "precise.events.topics" not in names and "precise.events.feed" not in names, module


def test_the_model_imports_no_store_kafka_or_http():
    for module in [m for m in MODULES if in_package(m, "precise.model")]:
        for name in imports(module):
            assert not in_package(name, "precise.store"), (module, name)
            assert name.split(".")[0] not in (*KAFKA_CLIENTS, *HTTP), (module, name)


def test_only_the_store_opens_storage_paths():
    """The lake, sequences, registry and snapshot layouts are spelled in precise.store alone."""
    for module, path in MODULES.items():
        if in_package(module, "precise.store"):
            continue
        source = path.read_text()
        for spelled in ('"_ledger.json"', '"_state.json"', '"LATEST"', '"manifest.json"', '"model.safetensors"'):
            assert spelled not in source, (module, spelled)


def test_no_import_cycles_inside_the_package():
    graph = {module: internal(module) for module in MODULES}
    # a package's __init__ importing its own submodules is not a cycle of the code
    for module in graph:
        graph[module] = {n for n in graph[module] if not (MODULES[n].name == "__init__.py" and in_package(module, n))}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycles.append([*stack[stack.index(name):], name])
            elif name not in state:
                visit(name, [*stack, name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
