"""`precise snapshots list|show|pin|unpin|rollback`: which user-embedding snapshot a task serves.

Serve's swap watcher serves PIN if there is one, else LATEST (SnapshotStore.served_version), so a
pin or a rollback here is what the running app follows; nothing is deleted or rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from precise.cli_errors import failing_with
from precise.config import load_config
from precise.store.snapshots import SnapshotError, SnapshotStore


def _summary(store: SnapshotStore, version: str) -> dict[str, Any]:
    ref = store.get(version)
    m = ref.manifest
    return {"version": version, "model_version": m.get("model_version"), "created": m.get("created"),
            "users": m.get("users"), "items": m.get("items"), "latest": version == store.latest_version(),
            "pinned": version == store.pinned_version(), "served": version == store.served_version()}


def _run(args: argparse.Namespace) -> int:
    root = args.root or load_config(args.config).storage.resolved_root()
    store = SnapshotStore(root, args.task)
    if args.action == "list":
        rows = [_summary(store, v) for v in store.versions()]
        out: Any = {"task": args.task, "latest": store.latest_version(), "pinned": store.pinned_version(),
                    "served": store.served_version(), "snapshots": rows}
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            for r in rows:
                flags = " ".join(f for f in ("served", "latest", "pinned") if r[f])
                print(f"{r['version']}  model {r['model_version']}  {flags}")
            print(f"served: {out['served']} (pinned: {out['pinned']}, latest: {out['latest']})")
        return 0
    if args.action == "unpin":
        existed = store.unpin()
        result: dict[str, Any] = {"task": args.task, "unpinned": existed, "served": store.served_version()}
    elif args.action == "rollback":
        # one step back from what is served now: the newest version older than it
        served = store.served_version()
        older = [v for v in store.versions() if served is not None and v < served]
        if not older:
            print(f"error: no snapshot older than the served one ({served}) to roll back to", file=sys.stderr)
            return 1
        store.pin(older[-1])
        result = {"task": args.task, "from": served, "served": store.served_version(), "pinned": older[-1]}
    else:
        if not args.version:
            print(f"error: snapshots {args.action} needs a VERSION", file=sys.stderr)
            return 2
        if args.action == "pin":
            store.pin(args.version)
            result = {"task": args.task, "pinned": args.version, "served": store.served_version()}
        else:
            result = {"task": args.task, **_summary(store, args.version), "manifest": store.get(args.version).manifest}
    print(json.dumps(result, indent=2) if args.json or args.action == "show"
          else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


run = failing_with(SnapshotError)(_run)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `snapshots` verbs to the top-level parser's subcommands."""
    parser = sub.add_parser(
        "snapshots", help="list, inspect, pin, unpin or roll back a task's embedding snapshots",
        description="Serve serves the pinned snapshot if there is one, else LATEST. rollback pins the "
                    "newest snapshot older than the served one; unpin returns to LATEST.")
    parser.add_argument("action", choices=["list", "show", "pin", "unpin", "rollback"])
    parser.add_argument("version", nargs="?", help="show / pin: the snapshot version, e.g. 000003")
    parser.add_argument("--task", default="default", help="the task (default: default)")
    parser.add_argument("--config", help="YAML config whose storage.root holds the snapshots")
    parser.add_argument("--root", help="storage root (overrides --config)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
