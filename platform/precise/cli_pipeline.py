"""`precise pipeline status`: the orchestrator's state as it is recorded in the store (done cycle
boundaries, the last cycle's report with the serving gate's decision, the last item cycle) and the
next boundaries, computed from the lake's events with the orchestrator's own rules."""

from __future__ import annotations

import argparse
import json
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


def _run(args: argparse.Namespace) -> int:
    status = pipeline_status(load_config(args.config))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print(status)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pipeline` verbs to the top-level parser's subcommands."""
    parser = sub.add_parser(
        "pipeline", help="the orchestrator's state: done cycles, the last cycle's report and gate, next boundary",
        description="Reads pipeline/<mode>/state.json (pipeline.mode of the config) and the lake's event "
                    "times; nothing is changed. A boundary is due when the lake's watermark has passed it: "
                    "the running orchestrator runs it on its next poll.")
    parser.add_argument("action", choices=["status"])
    parser.add_argument("--config", help="YAML config (storage.root, pipeline)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run)
