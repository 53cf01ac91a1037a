"""Two ingest jobs on one lake, as on a volume shared by two nodes where flock does not hold
(PRECISE_INGEST_NO_FLOCK), against the real broker, the real Ray and the real lake: the writer fence
(create-if-absent lease generations and ledger versions, no pause) lets exactly one of them write,
the other stops with a clear "fenced" error, and every event is in the lake exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from _ingest_support import JobProcess, assert_clean_lake, wait_until, write_config
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics
from precise.ingest.faults import LEASE_RACE_ENV, NO_FLOCK_ENV, STALL_ENV
from precise.store.files import Files
from precise.store.lake import load_ledger, read_events

pytestmark = pytest.mark.integration


def _produce(kafka, ids: range) -> set[str]:
    with EventProducer(kafka) as producer:
        for i in ids:
            producer.send_event({"event_id": f"ev-{i}", "user_id": f"u{i % 7}", "item_id": f"i{i % 5}",
                                 "scene": "family", "action": "rate", "ts": 1_700_000_000_000 + i})
        producer.flush(30)
    return {f"ev-{i}" for i in ids}


def _assert_exactly_once(root: Path, expected: set[str]) -> None:
    ids = read_events(root).column("event_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated events"
    assert set(ids) == expected, sorted(expected - set(ids))
    assert_clean_lake(root)


def test_two_writers_starting_at_once_one_writes_the_other_is_fenced(kafka_config, ray_head, tmp_path):
    kafka = kafka_config.model_copy(update={"partitions": 1})
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root, ingest={"once_max_failures": 2})
    expected = _produce(kafka, range(30))
    # both read "no writer yet" within the window, then both create generation 1: one is refused
    env = {NO_FLOCK_ENV: "1", LEASE_RACE_ENV: "8"}
    jobs = [JobProcess(config, "--once", env=env), JobProcess(config, "--once", env=env)]
    codes = [job.finish(300) for job in jobs]
    assert sorted(codes) == [0, 1], [(c, j.log[-2000:]) for c, j in zip(codes, jobs, strict=True)]
    loser = jobs[codes.index(1)]
    assert "fenced" in loser.log or "another ingest job" in loser.log, loser.log[-3000:]
    _assert_exactly_once(root, expected)


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_writer_that_stalls_past_its_lease_is_fenced_and_never_commits(kafka_config, ray_head, tmp_path):
    """Job A freezes (SIGSTOP) after writing its second batch's files, before its ledger commit; job B
    on another "node" takes the lake over once A's lease expired, cleans A's files and ingests
    everything. A, resumed, must not commit: it stops with the fenced error."""
    kafka = kafka_config.model_copy(update={"partitions": 1})
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root, ingest={"writer_lease_s": 3})
    expected = _produce(kafka, range(10))
    a = JobProcess(config, env={NO_FLOCK_ENV: "1", STALL_ENV: "before_ledger:2"})
    try:
        wait_until(lambda: load_ledger(Files(str(root))).offsets.get(kafka.events_topic) == {0: 10}, 180,
                   "job A commits its first batch", alive=a)
        expected |= _produce(kafka, range(10, 25))
        wait_until(lambda: _stopped(a.proc.pid), 120, "job A stalls before its second commit")
        time.sleep(4)  # past A's lease (3 s): no heartbeat comes from a frozen process

        b = JobProcess(config, "--once", env={NO_FLOCK_ENV: "1"})
        assert b.finish(300) == 0, b.log[-4000:]
        ledger = load_ledger(Files(str(root)))
        assert ledger.offsets[kafka.events_topic] == {0: 25}
        taken_over = ledger.writer_generation
        _assert_exactly_once(root, expected)

        os.kill(a.proc.pid, signal.SIGCONT)
        assert a.finish(120) == 1, a.log[-4000:]
        assert "fenced" in a.log, a.log[-3000:]
    finally:
        if a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
            a.kill()
    ledger = load_ledger(Files(str(root)))
    assert ledger.writer_generation == taken_over and ledger.offsets[kafka.events_topic] == {0: 25}
    _assert_exactly_once(root, expected)
