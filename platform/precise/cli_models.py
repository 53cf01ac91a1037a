"""`precise models list|show|diff`: read the model registry (promote / rollback are not built yet)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from precise.cli_errors import failing_with
from precise.config import load_config
from precise.store.registry import KINDS, ModelRegistry, RegistryError


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _run(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.root or load_config(args.config).storage.resolved_root())
    latest = registry.latest(args.kind, args.task)
    if args.action == "list":
        rows = [{"version": v, "latest": latest is not None and v == latest.version}
                for v in registry.versions(args.kind, args.task)]
        if args.json:
            print(json.dumps({"kind": args.kind, "task": args.task, "latest": latest and latest.version,
                              "versions": rows}, indent=2))
        else:
            for r in rows:
                print(f"{r['version']}{'  LATEST' if r['latest'] else ''}")
        return 0
    if len(args.versions) != (1 if args.action == "show" else 2):
        print(f"error: models {args.action} needs {'VERSION' if args.action == 'show' else 'VERSION_A VERSION_B'}",
              file=sys.stderr)
        return 2
    found = [registry.get(args.kind, v, args.task) for v in args.versions]
    if args.action == "show":
        model = found[0]
        print(json.dumps({"ref": model.ref, "path": str(model.path), "metadata": model.metadata}, indent=2))
        return 0
    a, b = (_flat(m.metadata) for m in found)
    changed = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    if args.json:
        print(json.dumps({"a": found[0].ref, "b": found[1].ref, "changed": changed}, indent=2))
    else:
        for k, (x, y) in changed.items():
            print(f"{k}: {x!r} -> {y!r}")
    return 0


run = failing_with(RegistryError)(_run)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` verbs to the top-level parser's subcommands."""
    parser = sub.add_parser("models", help="list, show or diff model versions in the registry",
                            description="diff compares two versions' metadata (config, metrics, data range).")
    parser.add_argument("action", choices=["list", "show", "diff"])
    parser.add_argument("versions", nargs="*", help="show: VERSION; diff: VERSION_A VERSION_B")
    parser.add_argument("--kind", choices=list(KINDS), default="universal")
    parser.add_argument("--task", help="targeted models: the task")
    parser.add_argument("--config", help="YAML config whose storage.root holds the registry")
    parser.add_argument("--root", help="storage root (overrides --config)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
