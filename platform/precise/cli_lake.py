"""`precise lake status|dead-letters`: what the lake holds, read through precise.store (nothing is
changed). `precise lake rewind` is in precise.cli; these verbs join its `lake` group.

status: the ledger per topic-partition with the lag against Kafka's end offsets (when the broker
answers), data files, committed events, dead letters by reason, retention gaps, rewinds and the
writer lease. dead-letters: lists rejected records, or exports them whole (raw key and value
included) as JSONL or Parquet.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from precise.cli_errors import failing_with
from precise.config import PreciseConfig, load_config
from precise.store.files import Files
from precise.store.lake import Layout, Ledger, has_ledger, load_ledger, read_dead_letters, split_committed, superseded
from precise.store.lease import WriterLease

EXPORT_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}


class LakeMissing(LookupError):
    """No lake at the storage root (nothing was ingested there)."""


def iso(ms: int | None) -> str | None:
    """An epoch-ms time as ISO 8601 UTC (None for none)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms is not None else None


def _storage(config: PreciseConfig) -> tuple[Files, Ledger]:
    storage = Files(config.storage.resolved_root())
    if not has_ledger(storage):
        raise LakeMissing(f"no lake at {storage.uri} (no ledger under lake/: nothing was ingested there yet; "
                          f"check storage.root)")
    return storage, load_ledger(storage)


def broker_offsets(config: PreciseConfig, topics: list[str]) -> tuple[dict[str, dict[int, int]] | None, str | None]:
    """Kafka's end offset per partition of `topics`, or (None, why) when the broker does not answer
    within `ingest.kafka_timeout_s`."""
    from precise.ingest.kafka import watermarks

    # librdkafka logs connection failures itself; route them to Python logging (off by default)
    quiet = config.ingest.model_copy(update={"consumer_config": {
        **config.ingest.consumer_config, "logger": logging.getLogger("precise.kafka")}})
    try:
        marks = watermarks(config.kafka, quiet, topics)
    except Exception as exc:  # any client failure means the same thing here: no end offsets
        return None, f"broker unreachable at {config.kafka.bootstrap_servers}: {exc}"
    return {t: {p: high for p, (_low, high) in parts.items()} for t, parts in marks.items()}, None


def _partitions(ledger: Ledger, ends: dict[str, dict[int, int]] | None) -> list[dict[str, Any]]:
    rows = []
    for role, topic in (("events", ledger.events_topic), ("items", ledger.items_topic)):
        if topic is None:
            continue
        known = ledger.offsets.get(topic, {})
        end = (ends or {}).get(topic, {})
        for partition in sorted(set(known) | set(end)):
            nxt, high = known.get(partition), end.get(partition)
            rows.append({"topic": topic, "role": role, "partition": partition, "next_offset": nxt,
                         "end_offset": high,
                         "lag": None if high is None else max(high - (nxt or 0), 0)})
    return rows


def _files(storage: Files, folder: str, offsets: dict[int, int]) -> dict[str, Any]:
    paths = [p for p in storage.list_files(folder) if p.endswith(".parquet")]
    committed, uncommitted = split_committed(paths, offsets)
    hidden = superseded(committed)
    sizes = {i.path: i.size for i in storage.fs.get_file_info(paths)} if paths else {}
    live = [p for p in committed if p not in hidden]
    return {"files": len(live), "bytes": sum(sizes[p] for p in live),
            "superseded_files": len(hidden), "uncommitted_files": len(uncommitted),
            "uncommitted_bytes": sum(sizes[p] for p in uncommitted), "paths": live}


def lake_status(config: PreciseConfig, kafka: bool = True) -> dict[str, Any]:
    """Everything `precise lake status` shows, as one JSON-able dict."""
    storage, ledger = _storage(config)
    layout = Layout(storage)
    topics = [t for t in (ledger.events_topic, ledger.items_topic) if t]
    ends, broker_error = broker_offsets(config, topics) if kafka else (None, "not asked (--no-kafka)")
    events = _files(storage, layout.events, ledger.offsets.get(ledger.events_topic or "", {}))
    committed_events = sum(pq.read_metadata(p, filesystem=storage.fs).num_rows for p in events.pop("paths"))
    dead_files: dict[str, Any] = {}
    for topic in topics:
        dead_files[topic] = _files(storage, f"{layout.dead_letter}/topic={topic}", ledger.offsets.get(topic, {}))
        dead_files[topic].pop("paths")
    dead = read_dead_letters(storage)
    lease = WriterLease(storage, config.ingest.writer_lease_s).newest()[1]
    if lease is not None:
        beat = int(lease.get("heartbeat_ms") or 0)
        age = round(time.time() - beat / 1000, 1) if beat else None
        state = "released" if not beat else "live" if age is not None and age < config.ingest.writer_lease_s \
            else "expired"
        lease = {**lease, "age_s": age, "state": state, "ttl_s": config.ingest.writer_lease_s}
    gaps = ledger.gaps
    return {
        "root": storage.uri,
        "ledger": {"events_topic": ledger.events_topic, "items_topic": ledger.items_topic,
                   "batches": ledger.batches, "committed_at": iso(ledger.committed_at_ms or None),
                   "committed_at_ms": ledger.committed_at_ms, "writer_generation": ledger.writer_generation,
                   "totals": ledger.totals},
        "broker": {"bootstrap": config.kafka.bootstrap_servers, "reachable": ends is not None,
                   "error": broker_error},
        "partitions": _partitions(ledger, ends),
        "events": {"committed": committed_events, **events},
        "dead_letters": {"committed": dead.num_rows,
                         "by_reason": dict(Counter(dead.column("reason_kind").to_pylist()).most_common()),
                         "files": dead_files},
        "retention_gaps": {"count": len(gaps), "records": sum(int(g["end"]) - int(g["start"]) for g in gaps),
                           "gaps": gaps},
        "rewinds": ledger.rewinds,
        "writer_lease": lease,
    }


def _print_status(s: dict[str, Any]) -> None:
    led = s["ledger"]
    print(f"lake {s['root']}: {led['batches']} batches, last commit {led['committed_at']} "
          f"(writer generation {led['writer_generation']})")
    b = s["broker"]
    print(f"broker {b['bootstrap']}: " + ("reachable" if b["reachable"] else f"{b['error']} (lag unknown)"))
    print(f"  {'topic':<28} {'part':>4} {'next offset':>12} {'end offset':>12} {'lag':>10}")
    for p in s["partitions"]:
        cells = [("-" if p[k] is None else str(p[k])) for k in ("next_offset", "end_offset", "lag")]
        print(f"  {p['topic']:<28} {p['partition']:>4} {cells[0]:>12} {cells[1]:>12} {cells[2]:>10}")
    e = s["events"]
    print(f"events: {e['committed']} committed in {e['files']} files ({e['bytes']} bytes); "
          f"{e['superseded_files']} superseded (compacted), {e['uncommitted_files']} uncommitted files")
    d = s["dead_letters"]
    reasons = ", ".join(f"{k} {n}" for k, n in d["by_reason"].items()) or "none"
    files = sum(f["files"] for f in d["files"].values())
    size = sum(f["bytes"] for f in d["files"].values())
    print(f"dead letters: {d['committed']} in {files} files ({size} bytes); by reason: {reasons}")
    g = s["retention_gaps"]
    print(f"retention gaps: {g['count']} ({g['records']} records lost to retention)")
    for gap in g["gaps"]:
        print(f"  {gap['topic']}[{gap['partition']}] offsets {gap['start']}..{gap['end']}")
    print(f"rewinds: {len(s['rewinds'])}")
    for r in s["rewinds"]:
        print(f"  {iso(r['at_ms'])} {r['topic']}: {r['from']} -> {r['to']}")
    lease = s["writer_lease"]
    print("writer lease: none" if lease is None else
          f"writer lease: {lease['state']}, owner {lease.get('owner')} on {lease.get('host')} pid {lease.get('pid')}, "
          f"generation {lease.get('generation')}"
          + ("" if lease["age_s"] is None else f", heartbeat {lease['age_s']} s ago (ttl {lease['ttl_s']:g} s)"))


def _status(args: argparse.Namespace) -> int:
    status = lake_status(load_config(args.config), kafka=not args.no_kafka)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return 0


def dead_letter_record(row: dict[str, Any]) -> dict[str, Any]:
    """One dead letter as JSON, losing nothing: the raw key and value in base64 (`value_text` is a
    convenience copy, when the value is UTF-8)."""
    out = {k: v for k, v in row.items() if k not in ("key", "value")}
    for name in ("key", "value"):
        raw = row.get(name)
        out[f"{name}_b64"] = None if raw is None else base64.b64encode(raw).decode()
    try:
        out["value_text"] = None if row.get("value") is None else row["value"].decode("utf-8")
    except UnicodeDecodeError:
        out["value_text"] = None
    return out


def _dead_letters(args: argparse.Namespace) -> int:
    from precise.ingest.validate import REASON_KINDS

    if args.reason is not None and args.reason not in REASON_KINDS:
        print(f"error: --reason {args.reason!r} is not a reason kind; one of {', '.join(REASON_KINDS)}",
              file=sys.stderr)
        return 2
    if args.limit < 0:
        print("error: --limit takes a count >= 0", file=sys.stderr)
        return 2
    fmt = EXPORT_FORMATS.get(Path(args.export).suffix.lower()) if args.export else None
    if args.export and fmt is None:
        print(f"error: --export {args.export}: the file name must end in {' or '.join(EXPORT_FORMATS)}",
              file=sys.stderr)
        return 2
    storage, _ = _storage(load_config(args.config))
    table = read_dead_letters(storage)
    if args.reason is not None:
        table = table.filter(pc.equal(table.column("reason_kind"), args.reason))
    table = table.sort_by([("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")])
    if args.export:
        _export(table, Path(args.export), fmt or "jsonl")
        result = {"exported": table.num_rows, "path": str(args.export), "format": fmt, "reason": args.reason}
        print(json.dumps(result) if args.json else f"exported {table.num_rows} dead letters to {args.export}")
        return 0
    rows = [dead_letter_record(r) for r in table.slice(0, args.limit).to_pylist()]
    if args.json:
        print(json.dumps({"total": table.num_rows, "shown": len(rows), "dead_letters": rows}, indent=2))
        return 0
    for r in rows:
        size = len(base64.b64decode(r["value_b64"] or ""))
        preview = r["value_text"] if r["value_text"] is not None else f"<{size} bytes, not UTF-8>"
        print(f"{r['topic']}[{r['partition']}]@{r['offset']}  {r['reason_kind']}: {r['reason']}  {preview[:80]!r}")
    print(f"{len(rows)} of {table.num_rows} shown" + (f" (--limit {args.limit}; --export PATH writes them all)"
                                                     if len(rows) < table.num_rows else ""))
    return 0


def _export(table: pa.Table, path: Path, fmt: str) -> None:
    """Write `table` whole at `path` (atomically: the file appears complete or not at all)."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    out = Files(path.parent)
    if fmt == "parquet":
        out.write_parquet(str(path), table)
    else:
        lines = (json.dumps(dead_letter_record(r)) + "\n" for r in table.to_pylist())
        out.write_bytes(str(path), "".join(lines).encode())


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `status` and `dead-letters` to the `lake` group's verbs."""
    st = verbs.add_parser(
        "status", help="the ledger per topic-partition with lag, files, events, dead letters, gaps, rewinds, lease",
        description="Reads the lake (nothing is changed). The lag is Kafka's end offset minus the ledger's "
                    "next offset; when the broker does not answer within ingest.kafka_timeout_s the status "
                    "says 'broker unreachable' and shows the lake without lag (exit 0). Exit 1 when there "
                    "is no lake at storage.root.")
    st.add_argument("--config", help="YAML config (storage.root, kafka)")
    st.add_argument("--no-kafka", action="store_true", help="do not ask the broker (no lag)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=failing_with(LakeMissing)(_status))
    dl = verbs.add_parser(
        "dead-letters", help="list the lake's dead letters, or export them all (JSONL or Parquet)",
        description="Committed dead letters of both topics, ordered by topic, partition and offset. "
                    "--export PATH writes every one (filtered by --reason only) with its raw key and value: "
                    "Parquet keeps the lake's schema; JSONL has key_b64 / value_b64 (base64 of the raw "
                    "bytes) and value_text when the value is UTF-8.")
    dl.add_argument("--config", help="YAML config (storage.root)")
    dl.add_argument("--reason", help="only this reason kind (e.g. invalid_json, missing_field)")
    dl.add_argument("--limit", type=int, default=20, help="list: at most this many (default 20)")
    dl.add_argument("--export", metavar="PATH", help="write them all to PATH (*.jsonl or *.parquet)")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dl.set_defaults(func=failing_with(LakeMissing)(_dead_letters))
