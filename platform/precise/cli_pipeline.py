"""`precise pipeline status|rerun`: the orchestrator's state as it is recorded in the store (done
cycle boundaries, the last cycle's report with the serving gate's decision, the last item cycle)
and the next boundaries, computed from the lake's events with the orchestrator's own rules; rerun
forgets the cycles from a boundary on, so the next orchestrator run trains them again."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from precise.cli_lake import iso
from precise.config import PreciseConfig, load_config


def pipeline_status(config: PreciseConfig) -> dict[str, Any]:
    """Everything `precise pipeline status` shows, as one JSON-able dict."""
    from precise.pipeline.orchestrator import Pipeline
    from precise.store.lake import read_events

    pipeline = Pipeline(config)
    state = pipeline.state()
    done = list(state["done_boundaries"])
    events = read_events(config.storage.resolved_root(), columns=["ts"]).to_pandas()
    pending = [b for b in pipeline.boundaries(events) if b not in done]
    period = int(config.pipeline.cycle_s * 1000)
    if pending:
        upcoming, due = pending[0], True
    elif done:
        upcoming, due = done[-1] + period, False
    else:
        upcoming, due = None, False  # no events yet: the first boundary follows from the first event
    reports = state.get("reports") or []
    last = reports[-1] if reports else None
    items = state.get("item_boundaries") or []
    return {
        "mode": config.pipeline.mode, "task": config.predict.task, "target": config.training.target,
        "records": pipeline.records.folder,
        "cycle_s": config.pipeline.cycle_s, "warmup_cycles": config.pipeline.warmup_cycles,
        "watermark_ts": None if events.empty else int(events["ts"].max()),
        "done_boundaries": [{"ts": b, "at": iso(b)} for b in done],
        "pending_boundaries": len(pending),
        "next_boundary": {"ts": upcoming, "at": iso(upcoming), "due": due},
        "last_cycle": None if last is None else {
            "cycle": last.get("cycle"), "boundary_ts": last.get("boundary_ts"),
            "boundary": iso(last.get("boundary_ts")), "seconds": last.get("seconds"),
            "universal": (last.get("universal") or {}).get("model"),
            "targeted": (last.get("targeted") or {}).get("model"),
            "gate": last.get("gate"), "snapshot": (last.get("snapshot") or {}).get("version"),
            "exposure": last.get("exposure")},
        "last_item_cycle": None if not items else {"ts": items[-1], "at": iso(items[-1])},
        "next_item_cycle_due": pipeline.item_boundary(events, state),
    }


def _print(s: dict[str, Any]) -> None:
    print(f"pipeline ({s['mode']}, task {s['task']}, target {s['target']}): {len(s['done_boundaries'])} cycles done, "
          f"watermark {iso(s['watermark_ts'])}")
    if s["done_boundaries"]:
        print(f"  done boundaries: {', '.join(b['at'] for b in s['done_boundaries'])}")
    nb = s["next_boundary"]
    print(f"  next boundary: {nb['at'] or '(after the first events and warm-up)'}"
          f"{' (due: the watermark passed it)' if nb['due'] else ''}; {s['pending_boundaries']} pending")
    last = s["last_cycle"]
    if last is None:
        print("  last cycle: none yet")
    else:
        gate = last["gate"] or {}
        scores = ", ".join(f"{k} {v:.4f}" for k, v in (gate.get("scores") or {}).items())
        print(f"  last cycle {last['cycle']} at {last['boundary']} ({last['seconds']} s): universal "
              f"{last['universal']}, targeted {last['targeted']}, snapshot {last['snapshot']}")
        print(f"  gate: {gate.get('choice')} published {gate.get('published')} ({scores}): {gate.get('reason')}")
    item = s["last_item_cycle"]
    print(f"  last item cycle: {item['at'] if item else 'none'}"
          f"{'; one due at ' + str(iso(s['next_item_cycle_due'])) if s['next_item_cycle_due'] else ''}")


def parse_boundary(text: str) -> int:
    """A boundary as epoch ms, or an ISO date/time (UTC unless it names a zone)."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def rerun_from(config: PreciseConfig, boundary: int) -> dict[str, Any]:
    """Remove the done boundaries at or after `boundary` (their reports and later item cycles with
    them) from the orchestrator's state; the next run trains those cycles again."""
    from precise.store.pipeline import PipelineRecords

    records = PipelineRecords(config.storage.resolved_root(), config.pipeline.mode)
    state = records.state()
    removed = [b for b in state["done_boundaries"] if b >= boundary]
    if removed:
        state["done_boundaries"] = [b for b in state["done_boundaries"] if b < boundary]
        state["reports"] = [r for r in state.get("reports") or [] if r.get("boundary_ts", 0) < boundary]
        if "item_boundaries" in state:
            state["item_boundaries"] = [b for b in state["item_boundaries"] if b < boundary]
        records.save_state(state)
    return {"mode": config.pipeline.mode, "from": boundary, "forgotten": [iso(b) for b in removed],
            "done": [iso(b) for b in state["done_boundaries"]]}


def _rerun(args: argparse.Namespace, config: PreciseConfig) -> int:
    if not args.from_:
        print("error: pipeline rerun needs --from BOUNDARY (epoch ms or ISO time, e.g. 2023-11-16)", file=sys.stderr)
        return 2
    try:
        boundary = parse_boundary(args.from_)
    except ValueError:
        print(f"error: --from {args.from_!r} is neither epoch ms nor an ISO date/time", file=sys.stderr)
        return 2
    result = rerun_from(config, boundary)
    if not result["forgotten"]:
        done = ", ".join(result["done"]) or "none"
        print(f"error: no done cycle boundary at or after {iso(boundary)} (done: {done})", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else
          f"forgot {len(result['forgotten'])} cycles from {iso(boundary)}: {', '.join(result['forgotten'])}; "
          f"the next pipeline run trains them again")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.action == "rerun":
        return _rerun(args, config)
    status = pipeline_status(config)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print(status)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pipeline` verbs to the top-level parser's subcommands."""
    parser = sub.add_parser(
        "pipeline", help="the orchestrator's state (done cycles, last report and gate, next boundary); re-run cycles",
        description="status reads pipeline/<mode>/state.json (pipeline.mode of the config) and the lake's "
                    "event times; nothing is changed. A boundary is due when the lake's watermark has passed "
                    "it: the running orchestrator runs it on its next poll. rerun --from BOUNDARY forgets the "
                    "done cycles at or after BOUNDARY, so the next run trains them again (stop the pipeline "
                    "job first: a running one would write its own state back). Exit 1 when no done cycle "
                    "is at or after it.")
    parser.add_argument("action", choices=["status", "rerun"])
    parser.add_argument("--from", dest="from_", metavar="BOUNDARY",
                        help="rerun: the first boundary to train again (epoch ms or ISO time, UTC)")
    parser.add_argument("--config", help="YAML config (storage.root, pipeline)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run)
