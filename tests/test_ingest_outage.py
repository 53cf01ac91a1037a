"""A broker outage: Kafka stopped for more than 20 s under a running ingest job, then restarted.

The job (continuous mode, a subprocess on the test Ray cluster) must notice (failed batches,
retried with backoff), stay up, and resume by itself; events produced before, during (buffered by
the producer) and after the outage must all reach the lake exactly once. A broker of its own, so
the session broker other tests use is never stopped.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from _ingest_support import JobProcess, assert_clean_lake, caught_up, wait_until, write_config
from precise.config import KafkaConfig
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics
from precise.stack import KafkaBroker
from precise.stack.process import free_port
from precise.store.lake import read_events

pytestmark = pytest.mark.integration
OUTAGE_S = 22


def _events(start: int, n: int) -> list[dict]:
    return [{"event_id": f"o-{i}", "user_id": f"u{i % 23}", "item_id": f"i{i % 13}", "scene": "s",
             "action": "click", "ts": 1_700_000_000_000 + i} for i in range(start, start + n)]


def test_ingestion_resumes_after_a_broker_outage(ray_head, tmp_path):
    broker = KafkaBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port(), heap="384m")
    broker.start()
    job = None
    try:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap, events_topic="events", items_topic="items",
                            dead_letter_topic="events.dlq", partitions=3)
        ensure_topics(kafka)
        root = tmp_path / "precise"
        config = write_config(tmp_path / "ingest.yaml", kafka, root,
                              ingest={"read_timeout_s": 5, "kafka_timeout_s": 3, "retry_backoff_max_s": 3})
        job = JobProcess(config)
        with EventProducer(kafka, delivery_timeout_ms=180_000, request_timeout_ms=10_000,
                           reconnect_backoff_max_ms=1_000) as producer:
            before, during, after = _events(0, 1_500), _events(1_500, 500), _events(2_000, 1_500)
            futures = [producer.send_event(e) for e in before]
            producer.flush()
            wait_until(lambda: caught_up(root, kafka), 120, "events before the outage ingested", alive=job)

            assert broker.stop()
            down_at = time.monotonic()
            futures += [producer.send_event(e) for e in during]  # buffered by the producer
            while time.monotonic() - down_at < OUTAGE_S:
                assert job.proc.poll() is None, f"the job died during the outage:\n{job.log[-3000:]}"
                time.sleep(1)
            assert "batch failed" in job.log, "the job should have noticed the outage"
            failures_during_outage = job.log.count("batch failed")

            broker.start()
            futures += [producer.send_event(e) for e in after]
            producer.flush(timeout=180)
            for future in futures:
                future.get(timeout=60)
        wait_until(lambda: caught_up(root, kafka), 180, "events after the outage ingested", alive=job)

        lake = read_events(root, columns=["event_id"]).column("event_id").to_pylist()
        produced = [e["event_id"] for e in before + during + after]
        assert len(lake) == len(set(lake)), "duplicated events"
        assert set(lake) == set(produced)
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish(60) == 0, job.log[-3000:]
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        assert summary["events"] == len(produced)
        assert summary["failures"] >= failures_during_outage > 0
        assert_clean_lake(root)
    finally:
        if job is not None:
            job.kill()
        broker.stop()
