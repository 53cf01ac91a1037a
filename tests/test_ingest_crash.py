"""Crash safety: SIGKILL the continuous ingest job again and again while events keep arriving.

Ten runs of `jobs/ingest.py` (thirty in the slow variant), each a fresh driver on the test Ray
cluster: six die at a fault point (PRECISE_INGEST_CRASH_AT: before writing, after the first file,
after all data but before the ledger, right after the ledger), the others are SIGKILLed at a random
moment after their first commit. Small batches make every run cover several batches. A last
`--once` run drains the topic; the lake must then hold exactly the produced event ids, each once;
every producer retry (the same event sent twice) must be one dead letter; the item table must show
each item's latest text; nothing uncommitted may remain.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest

from _ingest_support import JobProcess, assert_clean_lake, caught_up, wait_until, write_config
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics
from precise.store.lake import read_dead_letters, read_events, read_items

pytestmark = pytest.mark.integration
FAULTS = ["before_write:1", "mid_write:1", "before_ledger:1", "after_ledger:1", "mid_write:2", "before_ledger:3"]


class StreamProducer(threading.Thread):
    """Valid events at a steady pace, some sent twice (a producer retry), and item updates."""

    def __init__(self, kafka) -> None:
        super().__init__(daemon=True)
        self.kafka = kafka
        self.stop = threading.Event()
        self.futures: list = []
        self.ids: list[str] = []
        self.retries = 0
        self.latest_text: dict[str, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with EventProducer(self.kafka, linger_ms=5) as producer:
                n = 0
                while not self.stop.is_set():
                    event = {"event_id": f"c-{n}", "user_id": f"u{n % 31}", "item_id": f"i{n % 7}",
                             "scene": "s", "action": "click", "ts": 1_700_000_000_000 + n}
                    self.futures.append(producer.send_event(event))
                    self.ids.append(event["event_id"])
                    if n % 25 == 0:
                        raw, key = json.dumps(event).encode(), event["user_id"].encode()
                        self.futures.append(producer.send_raw(self.kafka.events_topic, raw, key=key))
                        self.retries += 1
                    if n % 50 == 0:
                        item = f"i{n % 7}"
                        self.futures.append(producer.send_item({"item_id": item, "text": f"{item} v{n}",
                                                                "created_ts": 1_700_000_000_000}))
                        self.latest_text[item] = f"{item} v{n}"
                    n += 1
                    time.sleep(0.008)
                producer.flush()
                for future in self.futures:
                    future.get(timeout=60)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.mark.parametrize("random_kills", [4, pytest.param(24, marks=pytest.mark.slow)])
def test_killed_ingest_never_loses_or_duplicates(kafka_config, ray_head, tmp_path, random_kills):
    ensure_topics(kafka_config)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka_config, root,
                          ingest={"max_records_per_partition": 150, "interval_s": 0.3})
    rng = random.Random(11)
    producer = StreamProducer(kafka_config)
    producer.start()
    outcomes = []
    try:
        for run in range(len(FAULTS) + random_kills):
            fault = FAULTS[run] if run < len(FAULTS) else ""
            job = JobProcess(config, env={"PRECISE_INGEST_CRASH_AT": fault})
            try:
                if fault:
                    code = job.finish(timeout=120)
                    assert code == -9, f"run {run}: expected the {fault} crash, got exit {code}:\n{job.log[-3000:]}"
                else:
                    job.wait_for("batch 1 committed", timeout=90)  # then die anywhere in a later batch
                    time.sleep(rng.uniform(0.0, 1.5))
                    assert job.proc.poll() is None, job.log[-3000:]
                    job.kill()
            finally:
                job.kill()
            committed = read_events(root, columns=["event_id"]).column("event_id").to_pylist()
            assert len(committed) == len(set(committed)), f"run {run}: duplicated events in the lake"
            outcomes.append((fault or "random", len(committed)))
        assert outcomes[-1][1] > 0, outcomes
    finally:
        producer.stop.set()
        producer.join(120)
    assert producer.error is None, producer.error

    drain_config = write_config(tmp_path / "drain.yaml", kafka_config, root,
                                ingest={"max_records_per_partition": 20_000})
    drain = JobProcess(drain_config, "--once")
    assert drain.finish(timeout=180) == 0, drain.log[-3000:]
    wait_until(lambda: caught_up(root, kafka_config), 30, "drained")

    lake = Counter(read_events(root, columns=["event_id"]).column("event_id").to_pylist())
    assert not [i for i, n in lake.items() if n > 1], "duplicated events"
    assert set(lake) == set(producer.ids), (
        f"missing {len(set(producer.ids) - set(lake))}, unexpected {len(set(lake) - set(producer.ids))}")
    dead = read_dead_letters(root).to_pylist()
    assert len(dead) == producer.retries, "each producer retry must be exactly one dead letter"
    assert {d["reason_kind"] for d in dead} == {"duplicate_event_id"}
    assert len({(d["partition"], d["offset"]) for d in dead}) == len(dead)
    items = {r["item_id"]: r["text"] for r in read_items(root).to_pylist()}
    assert items == producer.latest_text
    assert_clean_lake(root)
    print("runs (fault, committed events after the run):", outcomes, "final:", len(lake))
