"""Ingest metrics: events ingested and dead-lettered, lag per partition, batch latency."""

from __future__ import annotations

from collections.abc import Mapping

from precise.metrics import counter, gauge, histogram

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class IngestMetrics:
    """The ingest job's metrics; create after `ray.init()`."""

    def __init__(self) -> None:
        self.ingested = counter("precise_ingest_events_ingested", "Valid records committed to the lake",
                                ("topic",))
        self.dead_lettered = counter("precise_ingest_events_dead_lettered",
                                     "Rejected records committed to the dead-letter sink", ("topic", "reason_kind"))
        self.lag = gauge("precise_ingest_lag_records",
                         "Records in Kafka not yet committed to the lake, per partition", ("topic", "partition"))
        self.batch_latency = histogram("precise_ingest_batch_latency_s", "Wall time of one micro-batch",
                                       LATENCY_BUCKETS_S, ("status",))
        self.batches = counter("precise_ingest_batches", "Micro-batches by outcome", ("status",))

    def committed(self, ingested: Mapping[str, int], dead_lettered: Mapping[tuple[str, str], int],
                  lag: Mapping[tuple[str, int], int], latency_s: float, had_records: bool = True) -> None:
        for topic, n in ingested.items():
            if n > 0:
                self.ingested.inc(n, tags={"topic": topic})
        for (topic, kind), n in dead_lettered.items():
            if n > 0:
                self.dead_lettered.inc(n, tags={"topic": topic, "reason_kind": kind})
        for (topic, partition), n in lag.items():
            self.lag.set(n, tags={"topic": topic, "partition": str(partition)})
        if not had_records:  # an idle poll: only the lag is news
            return
        self.batch_latency.observe(latency_s, tags={"status": "committed"})
        self.batches.inc(1, tags={"status": "committed"})

    def failed(self, latency_s: float) -> None:
        self.batch_latency.observe(latency_s, tags={"status": "failed"})
        self.batches.inc(1, tags={"status": "failed"})
