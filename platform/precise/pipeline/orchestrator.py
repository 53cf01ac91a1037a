"""The paper's daily cycle, driven by event time (DESIGN section 2).

Each poll ingests what Kafka has (exactly once, into the lake) and reads the stream's watermark
(the newest event time in the lake). Every cycle boundary the watermark has passed is then run,
in order, on the events before that boundary: universal training continues incrementally from
the previous version, targeted training is re-warm-started from the new universal version
(`mode: periodic`) or continues from its own previous version after a single warm start
(`mode: once`, the paper's baseline), embeddings are predicted and published when serving is set
up, and a cycle report is written. Completed boundaries are recorded atomically, so a restarted
orchestrator continues with the next cycle. Replaying months of events fast therefore runs
months of daily cycles in minutes.

Catch-up: when the lake already holds events past several boundaries (a fast replay), each cycle
is cut from the stored sequences, which keep each user's most recent `sequences.max_len` events;
a cycle sees the part of that window before its boundary. Keep `sequences.max_len` (storage)
larger than `training.model.max_len` when replaying, so early cycles still see their history.
Live, the watermark sits at the boundary and nothing is cut away.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from precise.config import PreciseConfig
from precise.metrics import best_effort
from precise.metrics.pipeline import cycle_finished, gate_decided
from precise.pipeline.exposure import trained_share
from precise.store.pipeline import PipelineRecords

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    cycle: int
    boundary_ts: int  # events before this time were trained on
    mode: str
    universal: dict[str, Any]
    targeted: dict[str, Any]
    gate: dict[str, Any]  # which model was published for the target task, both scores and why
    snapshot: dict[str, Any] | None
    exposure: dict[str, Any] | None  # figure 4a measure for the cycle that starts at the boundary
    seconds: float


class Pipeline:
    def __init__(self, config: PreciseConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.settings = config.pipeline
        self.stop = stop or threading.Event()
        self.records = PipelineRecords(config.storage.resolved_root(), self.settings.mode)

    # -- state -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return self.records.state()

    def _events(self) -> Any:
        from precise.store.lake import read_events

        return read_events(self.config.storage.resolved_root(), columns=["item_id", "ts", "action"]).to_pandas()

    def boundaries(self, events: Any) -> list[int]:
        """Cycle boundaries the watermark has passed: period-aligned, after the warm-up history."""
        if events.empty:
            return []
        period = int(self.settings.cycle_s * 1000)
        first, watermark = int(events["ts"].min()), int(events["ts"].max())
        start = (first // period + self.settings.warmup_cycles) * period
        return list(range(start, watermark + 1, period))

    def item_boundary(self, events: Any, state: dict[str, Any]) -> int | None:
        """The newest item-cycle boundary (a multiple of `item_cycle_s`) the watermark has passed
        since the last full or item cycle, or None. Only the newest matters: an item cycle embeds
        the catalogue as it is now, so boundaries skipped while catching up need no cycle of their own."""
        if events.empty or not self.settings.item_cycle_s or not self.settings.predict or not state["done_boundaries"]:
            return None
        period = int(self.settings.item_cycle_s * 1000)
        newest = int(events["ts"].max()) // period * period
        last = max(state["done_boundaries"][-1], *(state.get("item_boundaries") or [0]))
        return newest if newest > last else None

    def run_item_cycle(self, boundary: int) -> dict[str, Any] | None:
        from precise.predict.publish import publish_items

        started = time.monotonic()
        snapshot = publish_items(self.config)
        log.info("item cycle at %d: %s in %.0f s", boundary, snapshot and snapshot["version"],
                 time.monotonic() - started)
        return snapshot

    # -- one cycle -------------------------------------------------------------------------

    def run_cycle(self, number: int, boundary: int, events: Any) -> CycleReport:
        from precise.train.gate import decide
        from precise.train.ray_job import run_training

        started = time.monotonic()
        log.info("cycle %d: events before %d", number, boundary)
        universal = run_training(self.config, "universal", until_ts=boundary)
        targeted = run_training(self.config, "targeted", until_ts=boundary,
                                warm_start=self.settings.mode == "periodic")
        gate = decide(self.config, universal.version, targeted.version, until_ts=boundary)
        log.info("cycle %d: publishing %s: %s", number, gate.published.ref, gate.reason)
        best_effort(gate_decided, self.config.training.target, gate.choice, gate.scores)
        snapshot = self._publish(gate.published) if self.settings.predict else None
        exposure = self._exposure(events, boundary)
        return CycleReport(cycle=number, boundary_ts=boundary, mode=self.settings.mode,
                           universal=universal.summary(), targeted=targeted.summary(), gate=gate.report(),
                           snapshot=snapshot, exposure=exposure, seconds=round(time.monotonic() - started, 1))

    def _exposure(self, events: Any, boundary: int) -> dict[str, Any] | None:
        """Figure 4a for the cycle after `boundary`: the share of its exposed items that the UT
        behind this cycle's targeted model has trained (the newest UT, or the first one)."""
        end = boundary + int(self.settings.cycle_s * 1000)
        if int(events["ts"].max()) < end:
            return None  # the cycle's exposures are not all in the lake yet
        done = self.state()["done_boundaries"]
        ut_boundary = boundary if self.settings.mode == "periodic" or not done else done[0]
        exposed, share = trained_share(events, boundary, end, ut_boundary, self.config.sequences.all_scene.actions)
        return {"exposed_items": exposed, "trained_share": share, "ut_boundary_ts": ut_boundary}

    def _publish(self, model: Any) -> dict[str, Any]:
        from precise.predict.publish import publish_model

        return publish_model(self.config, model)

    # -- the loop --------------------------------------------------------------------------

    def run(self, follow: bool = False) -> dict[str, Any]:
        """Ingest, then run every pending cycle; with `follow`, keep polling until stopped."""
        from precise.ingest.job import IngestJob

        ingest = IngestJob(self.config, stop=self.stop)
        trained = 0
        while not self.stop.is_set():
            ingest.run_once()
            events = self._events()
            state = self.state()
            pending = [b for b in self.boundaries(events) if b not in state["done_boundaries"]]
            for boundary in pending:
                if self.stop.is_set() or (self.settings.max_cycles and trained >= self.settings.max_cycles):
                    break
                report = self.run_cycle(len(state["done_boundaries"]) + 1, boundary, events)
                self.records.save_report(report.cycle, asdict(report))
                state["done_boundaries"].append(boundary)
                state["reports"].append(asdict(report))
                self.records.save_state(state)  # after the cycle's outputs: restart-safe
                trained += 1
                best_effort(cycle_finished, report.mode, self.config.training.target, report.seconds, report.exposure)
                log.info("cycle %d done in %.0f s", report.cycle, report.seconds)
            state = self.state()
            item_boundary = None if self.stop.is_set() else self.item_boundary(events, state)
            if item_boundary is not None:
                self.run_item_cycle(item_boundary)
                state.setdefault("item_boundaries", []).append(item_boundary)
                self.records.save_state(state)
            if not follow or (self.settings.max_cycles and trained >= self.settings.max_cycles):
                break
            self.stop.wait(self.settings.poll_interval_s)
        return {"mode": self.settings.mode, "cycles_run": trained, "cycles_total": len(self.state()["done_boundaries"]),
                "reports": self.records.cycles_folder}
