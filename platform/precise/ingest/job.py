"""The ingest job: micro-batches until caught up (`--once`) or forever (continuous), with retries.

Continuous mode polls every `interval` seconds once caught up (immediately while behind). A failed
batch (broker down, Ray error) is retried with exponential backoff; the job itself only stops when
asked: SIGTERM / SIGINT (also what `ray job stop` sends) set a flag, and the batch in hand finishes
and commits before the job exits. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict
from typing import Any

from precise.config import PreciseConfig
from precise.ingest.batch import BatchResult, Ingestor
from precise.ingest.faults import Faults
from precise.ingest.kafka import KafkaAccessDenied, check_access
from precise.metrics import best_effort
from precise.store.lake import WriterFenced

log = logging.getLogger(__name__)


def connect_ray() -> None:
    """Join the Ray cluster with the platform's code shipped to the workers (precise.runtime), and
    quiet Ray Data's progress output."""
    import ray

    from precise.runtime import connect_ray as join

    join()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM / SIGINT: finish the batch in hand, then exit. (Call after ray.init, which sets its own.)"""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s received: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class IngestJob:
    def __init__(self, config: PreciseConfig, stop: threading.Event | None = None,
                 build_sequences: bool | None = None, faults: Faults | None = None) -> None:
        self.config = config
        self.settings = config.ingest
        self.stop = stop or threading.Event()
        self.build_sequences = config.ingest.build_sequences if build_sequences is None else build_sequences
        self.faults = faults or Faults()
        self.totals = {"batches": 0, "records": 0, "events": 0, "dead_letters": 0, "items": 0, "failures": 0,
                       "files_compacted": 0}
        self.sequences: list[dict[str, Any]] = []
        self._topics_ready = False
        self._last_build = 0.0
        self._last_compaction = time.monotonic()  # the first pass one interval after start

    # ---- modes ------------------------------------------------------------------------------------

    def run_once(self) -> dict[str, Any]:
        """Ingest up to the end offsets seen at start, build sequences, return a summary."""
        started = time.monotonic()
        with self._ingestor() as ingestor:
            target = None
            failures = 0
            while not self.stop.is_set():
                try:
                    self._ensure_topics()
                    if target is None:
                        target = ingestor.end_offsets()
                    result = ingestor.run_batch(until=target)
                    if result.planned and not result.advanced:
                        raise RuntimeError("the planned range returned nothing (read timed out?)")
                except (WriterFenced, KafkaAccessDenied):
                    raise  # another job owns the lake now, or Kafka refuses our credentials: never retried
                except Exception as exc:
                    failures += 1
                    self.totals["failures"] += 1
                    if failures >= self.settings.once_max_failures:
                        raise RuntimeError(f"giving up after {failures} failed attempts: {exc}") from exc
                    self._backoff(failures, exc)
                    continue
                failures = 0
                self._count(result)
                if not result.planned:
                    break
            if self.build_sequences and not self.stop.is_set():
                self._build_sequences(force=True)
            self._compact(ingestor)
            return self._summary(ingestor, started)

    def run_continuous(self, interval_s: float | None = None) -> dict[str, Any]:
        """Ingest until stopped; each committed batch is logged, failures retried with backoff."""
        interval = self.settings.interval_s if interval_s is None else interval_s
        started = time.monotonic()
        with self._ingestor() as ingestor:
            failures = 0
            pending_build = False
            while not self.stop.is_set():
                try:
                    self._ensure_topics()
                    result = ingestor.run_batch()
                except (WriterFenced, KafkaAccessDenied):
                    raise  # another job owns the lake now, or Kafka refuses our credentials: never retried
                except Exception as exc:
                    failures += 1
                    self.totals["failures"] += 1
                    self._backoff(failures, exc)
                    continue
                failures = 0
                self._count(result)
                pending_build = pending_build or result.events > 0
                if pending_build and self.build_sequences and not self.stop.is_set():
                    if time.monotonic() - self._last_build >= self.settings.sequence_min_interval_s:
                        pending_build = not self._build_sequences()
                if time.monotonic() - self._last_compaction >= self.settings.compact_interval_s:
                    self._compact(ingestor)
                if result.caught_up:
                    self.stop.wait(interval)
            return self._summary(ingestor, started)

    # ---- helpers ----------------------------------------------------------------------------------

    def _ingestor(self) -> Ingestor:
        from precise.metrics.ingest import IngestMetrics

        connect_ray()  # metrics and Ray Data need the cluster (a no-op when already connected)
        ingestor = Ingestor(self.config, faults=self.faults)
        ingestor.metrics = IngestMetrics()
        return ingestor

    def _ensure_topics(self) -> None:
        """Create the topics (dead-letter included) once; a broker that is down fails the batch anyway."""
        if self._topics_ready:
            return
        from precise.events.topics import ensure_topics

        check_access(self.config.kafka, self.settings)  # a wrong password fails here, clearly, once
        try:
            ensure_topics(self.config.kafka, timeout_s=self.settings.kafka_timeout_s)
            self._topics_ready = True
        except Exception as exc:
            log.warning("could not check/create topics: %s", exc)
            raise

    def _backoff(self, failures: int, exc: Exception) -> None:
        delay = min(self.settings.retry_backoff_s * 2 ** (failures - 1), self.settings.retry_backoff_max_s)
        log.warning("batch failed (%s: %s); retry %d in %.1f s", type(exc).__name__, str(exc)[:300], failures, delay)
        self.stop.wait(delay)

    def _count(self, result: BatchResult) -> None:
        if not result.records:
            return
        self.totals["batches"] += 1
        for key in ("records", "events", "dead_letters", "items"):
            self.totals[key] += getattr(result, key)
        log.info("batch %d committed: %s", self.totals["batches"], result.summary())

    def _build_sequences(self, force: bool = False) -> bool:
        """Rebuild the touched users' sequences; a failure is logged, never fatal (retried later)."""
        from precise.ingest.sequences import SequenceBuilder

        self._last_build = time.monotonic()
        try:
            results = SequenceBuilder(self.config).build()
        except Exception:
            log.exception("building sequences failed; the next batch will retry")
            if force:
                raise
            return False
        self.sequences = [asdict(r) for r in results]
        return True

    def _compact(self, ingestor: Ingestor) -> None:
        """Merge small lake files (between batches: this job is the lake's only writer). A failure
        is logged, never fatal: the lake is consistent at every step of a compaction."""
        from precise.ingest.compact import compact_events

        self._last_compaction = time.monotonic()
        if self.settings.compact_min_files == 0 or self.stop.is_set():
            return
        try:
            result = compact_events(ingestor.storage, ingestor.ledger.offsets.get(self.config.kafka.events_topic, {}),
                                    self.settings.compact_min_files, self.settings.compact_grace_s)
        except Exception:
            log.exception("lake compaction failed; the next pass will retry")
            return
        self.totals["files_compacted"] += result.sources
        if ingestor.metrics is not None:
            best_effort(ingestor.metrics.compacted, result.sources, result.deleted)

    def _summary(self, ingestor: Ingestor, started: float) -> dict[str, Any]:
        return {**self.totals, "seconds": round(time.monotonic() - started, 2),
                "lake": ingestor.storage.uri, "ledger": ingestor.ledger.offsets, "sequences": self.sequences}
