"""`precise models list|show|diff|promote|rollback`: read the model registry, move its LATEST.

promote / rollback move LATEST (what training continues from and prediction embeds with) through
ModelRegistry.move_latest, which records the move in the registry and withdraws the newer versions
(see precise.store.registry)."""

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


def _move(args: argparse.Namespace, registry: ModelRegistry) -> int:
    """promote KIND VERSION / rollback KIND: move LATEST, recorded in the registry."""
    want = 2 if args.action == "promote" else 1
    if len(args.versions) != want or args.versions[0] not in KINDS:
        print(f"error: models {args.action} needs {'KIND VERSION' if want == 2 else 'KIND'} "
              f"(KIND: {' or '.join(KINDS)})", file=sys.stderr)
        return 2
    kind = args.versions[0]
    task = _task(args, kind)
    versions = registry.versions(kind, task)
    if args.action == "promote":
        version = args.versions[1]
        if version not in versions:
            print(f"error: no model {kind}/{task + '/' if task else ''}{version} in {registry.root} "
                  f"(registered: {', '.join(versions) or 'none'})", file=sys.stderr)
            return 2
    else:
        latest = registry.latest(kind, task)
        older = [v for v in versions if latest is not None and v < latest.version]
        if not older:
            print(f"error: no {kind} version older than LATEST ({latest and latest.version}) to roll back to",
                  file=sys.stderr)
            return 1
        version = older[-1]
    record = registry.move_latest(kind, version, task, action=args.action, note=args.note)
    out = {"kind": kind, "task": task, **record}
    print(json.dumps(out, indent=2) if args.json else
          f"{kind}{'/' + task if task else ''} LATEST: {record['from']} -> {record['to']}"
          f"{'' if record['moved'] else ' (already LATEST: nothing changed)'}"
          f"{'; withdrawn: ' + ', '.join(record['withdrawn']) if record['moved'] and record['withdrawn'] else ''}")
    return 0


def _task(args: argparse.Namespace, kind: str) -> str | None:
    """Targeted models: --task, else the config's training.target."""
    if kind != "targeted":
        return None
    return args.task or load_config(args.config).training.target


def _run(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.root or load_config(args.config).storage.resolved_root())
    if args.action in ("promote", "rollback"):
        return _move(args, registry)
    args.task = _task(args, args.kind)
    latest = registry.latest(args.kind, args.task)
    if args.action == "list":
        withdrawn = set(registry.withdrawn(args.kind, args.task))
        rows = [{"version": v, "latest": latest is not None and v == latest.version, "withdrawn": v in withdrawn}
                for v in registry.versions(args.kind, args.task)]
        moves = registry.moves(args.kind, args.task)
        if args.json:
            print(json.dumps({"kind": args.kind, "task": args.task, "latest": latest and latest.version,
                              "versions": rows, "moves": moves}, indent=2))
        else:
            for r in rows:
                print(f"{r['version']}{'  LATEST' if r['latest'] else ''}{'  withdrawn' if r['withdrawn'] else ''}")
            if moves:
                m = moves[-1]
                print(f"last move: {m['action']} {m['from']} -> {m['to']} by {m['by']} at {m['at']}")
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
    parser = sub.add_parser(
        "models", help="list, show, diff, promote or roll back model versions in the registry",
        description="diff compares two versions' metadata (config, metrics, data range). promote KIND "
                    "VERSION points KIND's LATEST (what training continues from, what prediction embeds "
                    "with) at VERSION, forwards or back; rollback KIND points it at the version before it. "
                    "Both are recorded in the registry (who, when, from, to) and withdraw the newer "
                    "versions: a model trained from a withdrawn one does not become LATEST on its own. "
                    "Exit 2 for an unknown version, 1 when there is nothing to roll back to.")
    parser.add_argument("action", choices=["list", "show", "diff", "promote", "rollback"])
    parser.add_argument("versions", nargs="*",
                        help="show: VERSION; diff: VERSION_A VERSION_B; promote: KIND VERSION; rollback: KIND")
    parser.add_argument("--kind", choices=list(KINDS), default="universal", help="list / show / diff")
    parser.add_argument("--task", help="targeted models: the task (default: the config's training.target)")
    parser.add_argument("--note", help="promote / rollback: why, kept with the move's record")
    parser.add_argument("--config", help="YAML config whose storage.root holds the registry")
    parser.add_argument("--root", help="storage root (overrides --config)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
