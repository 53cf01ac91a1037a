"""Ingest metrics: events ingested and dead-lettered, lag per partition, batch latency."""

from __future__ import annotations

from collections.abc import Mapping

from precise.metrics import inc, observe, set_gauge


class IngestMetrics:
    """The ingest job's metrics; use after `ray.init()`."""

    def committed(self, ingested: Mapping[str, int], dead_lettered: Mapping[tuple[str, str], int],
                  lag: Mapping[tuple[str, int], int], latency_s: float, had_records: bool = True) -> None:
        for topic, n in ingested.items():
            inc("precise_ingest_events_ingested", n, topic=topic)
        for (topic, kind), n in dead_lettered.items():
            inc("precise_ingest_events_dead_lettered", n, topic=topic, reason_kind=kind)
        for (topic, partition), n in lag.items():
            set_gauge("precise_ingest_lag_records", n, topic=topic, partition=partition)
        if not had_records:  # an idle poll: only the lag is news
            return
        observe("precise_ingest_batch_latency_s", latency_s, status="committed")
        inc("precise_ingest_batches", status="committed")

    def dead_letter_publish_failed(self, topic: str, n: int) -> None:
        inc("precise_ingest_dead_letter_publish_failures", n, topic=topic)

    def retention_gap(self, topic: str, n: int) -> None:
        inc("precise_ingest_retention_gap_records", n, topic=topic)

    def failed(self, latency_s: float) -> None:
        observe("precise_ingest_batch_latency_s", latency_s, status="failed")
        inc("precise_ingest_batches", status="failed")

    def compacted(self, merged: int, deleted: int) -> None:
        inc("precise_ingest_files_compacted", merged, stage="merged")
        inc("precise_ingest_files_compacted", deleted, stage="deleted")
