"""Replay into a real Kafka broker: every event exactly once, also across a killed and resumed run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from precise.data import load_movielens
from precise.events import InvalidEventError
from precise.events.producer import EventProducer
from precise.events.replay import replay
from precise.events.topics import end_offsets, ensure_topics, read_topic

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens("ml-100k")


def _assert_exact(kafka_config, dataset):
    records = read_topic(kafka_config.bootstrap_servers, kafka_config.events_topic)
    ids = Counter(json.loads(r.value)["event_id"] for r in records)
    duplicates = [i for i, n in ids.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} duplicated events, e.g. {duplicates[:3]}"
    assert set(ids) == set(dataset.events["event_id"])
    rates = sum(1 for i in ids if i.endswith(":rate"))
    assert rates == 100_000
    # each user's events are in one partition, in event-time order
    by_user: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = json.loads(r.value)
        assert r.key.decode() == event["user_id"]
        by_user.setdefault(event["user_id"], []).append(event["ts"])
    assert all(ts == sorted(ts) for ts in by_user.values())
    items = read_topic(kafka_config.bootstrap_servers, kafka_config.items_topic)
    assert sorted(r.key.decode() for r in items) == sorted(dataset.items["item_id"])


def test_replay_ml100k_exactly_once(kafka_config, ml100k):
    result = replay(ml100k, kafka_config, progress=False)
    assert result.events_sent == len(ml100k.events) == 155_375
    _assert_exact(kafka_config, ml100k)
    again = replay(ml100k, kafka_config, progress=False)
    assert again.events_sent == 0 and again.items_sent == 0
    _assert_exact(kafka_config, ml100k)


def test_killed_replay_resumes_without_loss_or_duplicates(kafka_config, ml100k, tmp_path):
    config = tmp_path / "replay.yaml"
    k = kafka_config
    config.write_text(
        f"kafka:\n  bootstrap_servers: '{k.bootstrap_servers}'\n  events_topic: {k.events_topic}\n"
        f"  items_topic: {k.items_topic}\n  dead_letter_topic: {k.dead_letter_topic}\n"
        f"  partitions: {k.partitions}\nreplay:\n  dataset: ml-100k\n"
    )
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--config", str(config), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ensure_topics(k)
    deadline = time.monotonic() + 120
    while sum(end_offsets(k.bootstrap_servers, k.events_topic).values()) < 40_000:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "replay made no progress"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = sum(end_offsets(k.bootstrap_servers, k.events_topic).values())
    assert 40_000 <= partial < 155_375, "the kill must interrupt the replay"

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["events_already_in_kafka"] == partial
    assert summary["events_sent"] == 155_375 - partial
    _assert_exact(kafka_config, ml100k)


def test_producer_rejects_invalid_events_and_sends_nothing(kafka_config):
    ensure_topics(kafka_config)
    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "scene": "s", "action": "click",
            "ts": 1_700_000_000_000}
    bad = [{**good, "user_id": ""}, {**good, "ts": "yesterday"}, {k: v for k, v in good.items() if k != "item_id"},
           {**good, "ts": -1}, {**good, "user_id": 7}]
    with EventProducer(kafka_config) as producer:
        for event in bad:
            with pytest.raises(InvalidEventError):
                producer.send_event(event)
        producer.flush()
        assert sum(end_offsets(kafka_config.bootstrap_servers, kafka_config.events_topic).values()) == 0
        producer.send_event(good).get(timeout=30)
    assert sum(end_offsets(kafka_config.bootstrap_servers, kafka_config.events_topic).values()) == 1


def test_replay_speed_factor_paces_the_stream(kafka_config):
    from precise.data import SyntheticConfig, generate_synthetic

    # 1 event-time hour of a 0.2 ev/s stream at 3600x: about 720 events over about 1 wall second
    data = generate_synthetic(SyntheticConfig(users=50, initial_items=30, new_items_per_day=0, days=1,
                                              events_per_second=0.2, like_rate=0.0, seed=1))
    first_hour = data.events[data.events["ts"] < data.events["ts"].iloc[0] + 3_600_000]
    data = type(data)(data.name, first_hour.reset_index(drop=True), data.items, len(first_hour))
    started = time.monotonic()
    replay(data, kafka_config, speed=3600.0, progress=False)
    elapsed = time.monotonic() - started
    span_s = (first_hour["ts"].iloc[-1] - first_hour["ts"].iloc[0]) / 1000 / 3600
    assert elapsed >= span_s * 0.95
    with pytest.raises(ValueError, match="speed must be > 0"):
        replay(data, kafka_config, speed=0)
