"""Bad input never stops the job and is never dropped: each reject is dead-lettered with its reason.

523 malformed records of 12 kinds, mixed with valid events and items, go to a running continuous
ingest job (a subprocess on the test Ray cluster). Every valid record must reach the lake, every
bad one the dead-letter sink (lake folder and topic) with the expected reason and its raw bytes,
and the job must stay up and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request

import pytest

from _ingest_support import JobProcess, assert_clean_lake, caught_up, wait_until, write_config
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics, read_topic
from precise.store.lake import read_dead_letters, read_events, read_items

pytestmark = pytest.mark.integration
PER_KIND = 40
MAX_PAYLOAD = 4096
ACTIONS = ["rate", "like", "click"]


def _event(i: int, **changes: object) -> dict:
    event = {"event_id": f"ev-{i}", "user_id": f"u{i % 37}", "item_id": f"i{i % 11}", "scene": "family",
             "action": ACTIONS[i % 3], "ts": 1_700_000_000_000 + i}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def malformed(i: int, now_ms: int) -> dict[str, bytes | None]:
    """One record of each kind; the key is the reason_kind the job must report."""
    return {
        "invalid_json": _json(_event(i))[:-7],
        "not_utf8": b'{"event_id": "' + bytes([0xC3, 0x28, 0xFF]) + b'"}',
        "not_object": _json([_event(i)]),
        "missing_field": _json(_event(i, item_id=...)),
        "wrong_type": _json(_event(i, user_id=i) if i % 2 else _event(i, ts=str(1_700_000_000_000))),
        "empty_id": _json(_event(i, event_id="" if i % 2 else "   ")),
        "null_bytes": _json(_event(i, user_id=f"u\u0000{i}")),
        "invalid_timestamp": _json(_event(i, ts=-i - 1 if i % 2 else now_ms + 7 * 24 * 3600 * 1000)),
        "action_not_allowed": _json(_event(i, action="purchase")),  # a contract action, not configured here
        "oversized": _json(_event(i, description="x" * (MAX_PAYLOAD + 10))),
        "empty": None,
        # a raw NUL byte inside the JSON text is not valid JSON either
        "invalid_json_nul": _json(_event(i))[:10] + b"\x00" + _json(_event(i))[10:],
    }


EXPECTED_KIND = {"invalid_json_nul": "invalid_json"}


def test_bad_records_are_dead_lettered_and_the_job_stays_up(kafka_config, ray_head, tmp_path):
    kafka = kafka_config.model_copy(update={"allowed_actions": ACTIONS})
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root, ingest={"max_payload_bytes": MAX_PAYLOAD})
    text = config.read_text().replace("  partitions: 3\n", "  partitions: 3\n  allowed_actions: [rate, like, click]\n")
    config.write_text(text)
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)

    expected_bad: dict[tuple[str, int, int], tuple[str, bytes | None]] = {}
    valid_ids: set[str] = set()
    job = JobProcess(config)
    try:
        with EventProducer(kafka) as producer:
            def send_bad(topic: str, kind: str, value: bytes | None, key: bytes = b"k") -> None:
                meta = producer.send_raw(topic, value, key=key).get(timeout=30)
                expected_bad[(topic, meta.partition, meta.offset)] = (EXPECTED_KIND.get(kind, kind), value)

            # wave 1: valid events and items only
            first_wave = [_event(i) for i in range(600)]
            for event in first_wave:
                producer.send_event(event)
            valid_ids.update(e["event_id"] for e in first_wave)
            for i in range(11):
                producer.send_item({"item_id": f"i{i}", "text": f"Item {i}", "created_ts": 1_700_000_000_000})
            producer.flush()
            job.wait_for("batch 1 committed", timeout=120)
            wait_until(lambda: caught_up(root, kafka), 60, "first wave ingested", alive=job)

            # wave 2: bad records of every kind, interleaved with valid ones, and duplicates
            bad = [(kind, value) for i in range(PER_KIND) for kind, value in malformed(1_000 + i, now_ms).items()]
            good = [_event(i) for i in range(600, 1_000)]
            rng.shuffle(bad)
            for n, (kind, value) in enumerate(bad):
                send_bad(kafka.events_topic, kind, value)
                if n % 2 == 0 and good:
                    event = good.pop()
                    producer.send_event(event).get(timeout=30)
                    valid_ids.add(event["event_id"])
            for event in good:
                producer.send_event(event)
                valid_ids.add(event["event_id"])
            for i in range(0, 600, 15):  # producer retries of events already in the lake
                event = first_wave[i]
                send_bad(kafka.events_topic, "duplicate_event_id", _json(event), key=event["user_id"].encode())
            twin = _event(5_000)  # a duplicate within one batch: the first copy wins
            producer.send_event(twin).get(timeout=30)
            valid_ids.add(twin["event_id"])
            send_bad(kafka.events_topic, "duplicate_event_id", _json(twin), key=twin["user_id"].encode())
            send_bad(kafka.items_topic, "missing_field", _json({"item_id": "i99"}), key=b"i99")
            send_bad(kafka.items_topic, "wrong_type", _json({"item_id": "i98", "text": 5, "created_ts": 1}),
                     key=b"i98")
            producer.flush()

        assert len(expected_bad) >= 500
        wait_until(lambda: caught_up(root, kafka), 120, "second wave ingested", alive=job)
        assert job.proc.poll() is None, "the job must survive bad input"

        lake = read_events(root).column("event_id").to_pylist()
        assert sorted(lake) == sorted(valid_ids), "valid events missing or duplicated"
        dead = {(r["topic"], r["partition"], r["offset"]): r for r in read_dead_letters(root).to_pylist()}
        expected = expected_bad
        assert sorted(dead) == sorted(expected), "dead letters differ from the bad records sent"
        for where, (kind, raw) in expected.items():
            row = dead[where]
            assert row["reason_kind"] == kind, (where, row["reason"])
            assert row["value"] == raw and row["reason"]
        kinds = {kind for kind, _ in expected.values()}
        assert len(kinds) >= 10, kinds
        assert read_items(root).num_rows == 11

        published = {(m["topic"], m["partition"], m["offset"]) for m in
                     (json.loads(r.value) for r in read_topic(kafka.bootstrap_servers, kafka.dead_letter_topic))}
        assert published == set(expected)  # at least once, and here exactly: nothing was retried

        _assert_metrics_exported(ray_head, kafka.events_topic)
        job.proc.send_signal(signal.SIGTERM)
        assert job.finish(60) == 0, job.log[-3000:]
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        assert summary["dead_letters"] == len(expected)
        assert summary["events"] == len(valid_ids)
        assert_clean_lake(root)
    finally:
        job.kill()


def _assert_metrics_exported(ray_head, topic: str) -> None:
    """The job's ray.util.metrics reach the head's Prometheus endpoint."""
    url = f"http://127.0.0.1:{ray_head.metrics_port}/metrics"
    deadline = time.monotonic() + 45
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        if "precise_ingest_events_dead_lettered" in text and "precise_ingest_batch_latency_s" in text:
            break
        time.sleep(2)
    assert "precise_ingest_events_dead_lettered" in text, "ingest metrics not exported"
    assert f'topic="{topic}"' in text
    assert "precise_ingest_lag_records" in text
