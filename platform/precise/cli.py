"""`precise` command line: the local stack (`precise stack up|down|status|fetch`), lake operations
(`precise lake rewind`; `status` and `dead-letters` in precise.cli_lake), and the verb groups
registered from their own modules (config, snapshots, models, pipeline)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata

from precise import cli_config, cli_lake, cli_models, cli_pipeline, cli_snapshots
from precise.config import ConfigError, load_config
from precise.stack import LocalStack, StackError, kafka_jars


def _stack(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    stack = LocalStack(config.stack, config.kafka)
    if args.action == "fetch":
        print(f"Kafka jars ready in {kafka_jars()}")
        return 0
    if args.action == "up":
        print("starting Kafka broker ...", flush=True)
        info = stack.up(with_ray=not args.no_ray)
        print(f"Kafka   {info['kafka']['bootstrap']}  topics: {info['topics']}")
        if not args.no_ray:
            print(f"Ray     {info['ray']['address']}  dashboard: {info['ray']['dashboard']}")
            print(f"        auth token: {info['ray']['auth_token_file']}")
        print(f"Client environment (for `ray job submit`, scripts): source {info['env_file']}")
        return 0
    if args.action == "down":
        stopped = stack.down()
        for name, was_running in stopped.items():
            print(f"{name}: {'stopped' if was_running else 'was not running'}")
        return 0
    status = stack.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        k, r = status["kafka"], status["ray"]
        print(f"Kafka  {'UP  ' if k['running'] else 'DOWN'} {k['bootstrap']}  log: {k['log']}")
        for topic, count in (k.get("topics") or {}).items():
            print(f"       topic {topic}: {count} records")
        if "error" in k:
            print(f"       error: {k['error']}")
        health = "healthy" if r["dashboard_healthy"] else "not answering"
        print(f"Ray    {'UP  ' if r['running'] else 'DOWN'} {r['address']}  dashboard {r['dashboard']} ({health})")
        m = status["metrics"]
        series = m.get("platform_series") or {}
        state = f"{len(series)} platform series" if m["answering"] else f"not answering {m.get('error', '')}".strip()
        print(f"Metrics {m['url']} ({state})")
        if args.metrics:
            for name, value in series.items():
                print(f"       {name} {value:g}")
    return 0 if status["kafka"]["running"] else 3


def _lake_rewind(args: argparse.Namespace) -> int:
    """`precise lake rewind`: move the ledger back (aware of compaction); the next ingest re-reads."""
    from precise.store.files import Files
    from precise.store.lake import Layout, is_import_partition, load_ledger
    from precise.store.lease import WriterLease
    from precise.store.rewind import RewindError, rewind

    config = load_config(args.config)
    storage = Files(config.storage.resolved_root())
    topic = args.topic or config.kafka.events_topic
    try:
        offsets = {int(p): int(o) for p, o in (item.split("=", 1) for item in args.offset)}
    except ValueError:
        print("error: --offset takes PARTITION=OFFSET, e.g. --offset 0=51234", file=sys.stderr)
        return 2
    if args.to_offset is not None:
        offsets = {p: args.to_offset for p in load_ledger(storage).offsets.get(topic, {})
                   if not is_import_partition(p)} | offsets
    if not offsets:
        print("error: give --offset PARTITION=OFFSET (repeatable) or --to-offset OFFSET", file=sys.stderr)
        return 2
    try:
        with storage.lock(Layout(storage).lock, "the lake (stop the ingest job first)"):
            lease = WriterLease(storage, config.ingest.writer_lease_s)  # also holds across nodes
            lease.acquire(same_host_is_stale=storage.local, floor=load_ledger(storage).writer_generation)
            try:
                result = rewind(storage, topic, offsets)
            finally:
                lease.release()
    except (RewindError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    print("next: run ingest (it re-reads from there), then `python jobs/sequences.py --config ... --full`",
          file=sys.stderr)
    return 0


def _add_lake_parser(sub: argparse._SubParsersAction) -> None:
    lake = sub.add_parser("lake", help="operations on the event lake")
    verbs = lake.add_subparsers(dest="verb", required=True)
    rw = verbs.add_parser("rewind", help="move the ledger back so ingest re-reads from an offset "
                                         "(stop ingest first; safe after compaction)")
    rw.add_argument("--config", help="YAML config (storage.root and kafka topics)")
    rw.add_argument("--topic", help="default: kafka.events_topic")
    rw.add_argument("--offset", action="append", default=[], metavar="PARTITION=OFFSET",
                    help="new next offset of one partition (repeatable)")
    rw.add_argument("--to-offset", type=int, help="the same new next offset for every partition in the ledger")
    rw.set_defaults(func=_lake_rewind)
    cli_lake.register(verbs)


def _version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    try:
        return metadata.version("precise-on-ray")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="precise", description="PRECISE on Ray")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    stack = sub.add_parser("stack", help="the embedded local stack: Kafka broker + Ray head")
    stack.add_argument("action", choices=["up", "down", "status", "fetch"])
    stack.add_argument("--config", help="YAML config (default: built-in defaults)")
    stack.add_argument("--no-ray", action="store_true", help="up: start Kafka only")
    stack.add_argument("--json", action="store_true", help="status: machine-readable")
    stack.add_argument("--metrics", action="store_true",
                       help="status: list the platform's metrics (ray_precise_*) from the Prometheus endpoint")
    stack.set_defaults(func=_stack)
    _add_lake_parser(sub)
    cli_config.register(sub)
    cli_snapshots.register(sub)
    cli_models.register(sub)
    cli_pipeline.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
