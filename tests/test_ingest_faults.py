"""Faults that must not stop ingest or lose records (issue 13, ingest side), against the real broker
and the real lake: an oversized poison record with dead-letter publishing on, transactional
producers with aborted transactions, retention gaps, the replication factor of created topics."""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pyarrow.parquet as pq
import pytest

from _ingest_support import JobProcess, assert_clean_lake, write_config
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics, read_topic
from precise.store.files import Files
from precise.store.lake import read_dead_letters, read_events

pytestmark = pytest.mark.integration


def _event(i: int) -> dict:
    return {"event_id": f"ev-{i}", "user_id": f"u{i % 7}", "item_id": f"i{i % 5}", "scene": "family",
            "action": "rate", "ts": 1_700_000_000_000 + i}


def test_an_oversized_poison_record_with_publishing_on_does_not_stop_ingest(kafka_config, ray_head, tmp_path):
    """A 1.5 MB malformed record (the broker takes 2 MB) is bigger than a dead-letter message may be:
    the lake keeps it whole, the topic gets a bounded copy pointing at the lake row, and the valid
    events behind it are ingested by one `--once` run."""
    kafka = kafka_config
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root,
                          ingest={"publish_dead_letters": True, "dead_letter_max_bytes": 1024})
    poison = b'{"event_id": "big", "x": "' + b"y" * 1_500_000  # not even JSON
    with EventProducer(kafka, max_request_size=2 * 1024 * 1024) as producer:
        producer.send_raw(kafka.events_topic, poison, key=b"k").get(timeout=30)
        for i in range(20):
            producer.send_event(_event(i))
        producer.flush(30)

    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]

    events = read_events(root)
    assert sorted(events.column("event_id").to_pylist()) == sorted(f"ev-{i}" for i in range(20))
    dead = read_dead_letters(root)
    assert dead.num_rows == 1
    assert dead.column("value")[0].as_py() == poison  # the lake's copy is whole
    messages = read_topic(kafka.bootstrap_servers, kafka.dead_letter_topic, timeout_s=30)
    assert len(messages) == 1
    message = json.loads(messages[0].value)
    assert message["value_truncated"] is True and message["value_bytes"] == len(poison)
    assert base64.b64decode(message["value_b64"]) == poison[:1024]
    assert len(messages[0].value) < 4096
    # the pointer leads to the full record
    pointed = pq.read_table(root / message["lake_file"], partitioning=None)
    assert pointed.column("value")[message["lake_row"]].as_py() == poison
    assert pointed.column("offset")[message["lake_row"]].as_py() == message["offset"]
    assert_clean_lake(root)


def test_a_dead_letter_topic_that_refuses_is_counted_not_fatal(kafka_config, ray_head, tmp_path):
    """The dead-letter topic refuses every message (its max.message.bytes is 200): every batch still
    commits, the failure is logged and counted, and the lake has every reject."""
    from confluent_kafka.admin import AdminClient, NewTopic

    kafka = kafka_config
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    created = admin.create_topics([NewTopic(kafka.dead_letter_topic, 1, 1, config={"max.message.bytes": "200"})])
    created[kafka.dead_letter_topic].result(30)
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root,
                          ingest={"publish_dead_letters": True, "kafka_timeout_s": 2})
    with EventProducer(kafka) as producer:
        producer.send_raw(kafka.events_topic, b"not json", key=b"k").get(timeout=30)
        for i in range(5):
            producer.send_event(_event(i))
        producer.flush(30)
    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    assert read_events(root).num_rows == 5
    assert read_dead_letters(root).num_rows == 1
    assert "not published" in job.log, job.log[-3000:]
    assert read_topic(kafka.bootstrap_servers, kafka.dead_letter_topic, timeout_s=30) == []


def test_topics_are_created_at_the_brokers_default_replication(kafka_config):
    """No forced replication factor 1: the default asks the broker for its own (-1 in CreateTopics,
    1 on this one-broker stack); an explicit kafka.replication_factor is passed through, so 2 on one
    broker is refused by the broker rather than silently downgraded."""
    from confluent_kafka.admin import AdminClient
    from kafka.errors import InvalidReplicationFactorError

    assert kafka_config.replication_factor is None
    ensure_topics(kafka_config)
    metadata = AdminClient({"bootstrap.servers": kafka_config.bootstrap_servers}).list_topics(timeout=30)
    partitions = metadata.topics[kafka_config.events_topic].partitions
    assert partitions and all(len(p.replicas) == 1 for p in partitions.values())
    roles = ("events_topic", "items_topic", "dead_letter_topic")
    names = {role: getattr(kafka_config, role) + "-rf2" for role in roles}
    wanted = kafka_config.model_copy(update={"replication_factor": 2, **names})
    with pytest.raises(InvalidReplicationFactorError):
        ensure_topics(wanted)


def test_a_retention_gap_is_recorded_in_the_ledger_and_counted(kafka_config, ray_head, tmp_path):
    """Kafka deletes offsets the lake never read (here by DeleteRecords, what retention does): the
    next batch skips them, and the ledger records which and how many."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from precise.store.lake import load_ledger

    kafka = kafka_config.model_copy(update={"partitions": 1})
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root)
    with EventProducer(kafka) as producer:
        for i in range(5):
            producer.send_event(_event(i))
        producer.flush(30)
    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    with EventProducer(kafka) as producer:
        for i in range(5, 15):
            producer.send_event(_event(i))
        producer.flush(30)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.delete_records([TopicPartition(kafka.events_topic, 0, 9)]).values():
        future.result(30)  # offsets 5..8 are gone before the lake read them

    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    ledger = load_ledger(Files(str(root)))
    assert [(g["topic"], g["partition"], g["start"], g["end"]) for g in ledger.gaps] == [(kafka.events_topic, 0, 5, 9)]
    assert ledger.totals["retention_gap_records"] == 4
    assert sorted(read_events(root).column("event_id").to_pylist()) == sorted(
        f"ev-{i}" for i in [*range(5), *range(9, 15)])


def test_transactional_producers_are_ingested_promptly_and_aborted_records_never_land(kafka_config, ray_head,
                                                                                      tmp_path):
    """5 committed and 2 aborted transactions (confluent-kafka's transactional producer, as Flink or
    Kafka Streams write): every partition's log ends in a transaction marker. One `--once` run must
    ingest exactly the committed events, each read taking seconds (not the read timeout, 30 s
    here), and finish."""
    import time

    from confluent_kafka import Producer

    kafka = kafka_config
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root, ingest={"read_timeout_s": 30})
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": f"tx-{kafka.events_topic}"})
    producer.init_transactions(30)
    committed, aborted = set(), set()
    n = 0
    for tx in range(7):
        producer.begin_transaction()
        ids = set()
        for _ in range(40):
            event = _event(n)
            producer.produce(kafka.events_topic, key=event["user_id"].encode(), value=json.dumps(event).encode())
            ids.add(event["event_id"])
            n += 1
        if tx in (2, 5):
            producer.abort_transaction(30)
            aborted |= ids
        else:
            producer.commit_transaction(30)
            committed |= ids
    started = time.monotonic()
    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    took = time.monotonic() - started
    ids = read_events(root).column("event_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == committed and not set(ids) & aborted
    assert read_dead_letters(root).num_rows == 0
    # A read that waits for a marker's offset runs into read_timeout_s (30 s): every committed batch's
    # read must be well below it (measured, not the --once wall time, which a loaded machine stretches)
    import ast
    import re

    reads = [ast.literal_eval(m[1])["read_s"] for m in re.finditer(r"batch \d+ committed: (\{.*\})", job.log)]
    assert reads and max(reads) < 20, (reads, took)
    assert "timed out" not in job.log, job.log[-3000:]
    assert_clean_lake(root)


def test_a_deleted_and_recreated_topic_starts_a_new_incarnation_in_the_same_lake(kafka_config, ray_head, tmp_path):
    """The events topic is deleted, re-created and refilled, its offsets again from 0, below and past
    the ledger's: without topic ids ingest would silently skip the offsets below the ledger. The
    ledger holds the topic id; the next run logs the new incarnation, keeps the old one's offsets
    as history, reads the new topic from its start, and the lake ends with every event of both
    incarnations exactly once: the old files untouched, the new ones after them."""
    from confluent_kafka.admin import AdminClient

    from precise.store.lake import Layout, load_ledger

    kafka = kafka_config.model_copy(update={"partitions": 1})
    ensure_topics(kafka)
    root = tmp_path / "precise"
    storage = Files(str(root))
    config = write_config(tmp_path / "ingest.yaml", kafka, root, ingest={"once_max_failures": 1})
    with EventProducer(kafka) as producer:
        for i in range(10):
            producer.send_event(_event(i))
        producer.flush(30)
    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    first_id = load_ledger(storage).topic_ids[kafka.events_topic]
    old_files = {p: storage.read_bytes(p) for p in storage.list_files(Layout(storage).events)}

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.delete_topics([kafka.events_topic])[kafka.events_topic].result(30)
    import time
    deadline = time.monotonic() + 60
    while True:  # deletion is asynchronous: retry the creation until the name is free
        try:
            ensure_topics(kafka)
            if kafka.events_topic in admin.list_topics(timeout=10).topics:
                break
        except Exception:
            assert time.monotonic() < deadline
        time.sleep(0.5)
    with EventProducer(kafka) as producer:  # offsets 0..14: below the ledger's 10 and past it
        for i in range(100, 115):
            producer.send_event(_event(i))
        producer.flush(30)

    for run in range(2):  # the new incarnation, then a run with nothing new
        job = JobProcess(config, "--once")
        assert job.finish(240) == 0, job.log[-4000:]
        if run == 0:
            assert "deleted and re-created" in job.log, job.log[-3000:]
    expected = sorted([f"ev-{i}" for i in range(10)] + [f"ev-{i}" for i in range(100, 115)])
    ids = read_events(root).column("event_id").to_pylist()
    assert sorted(ids) == expected, ids
    ledger = load_ledger(storage)
    assert ledger.topic_ids[kafka.events_topic] != first_id
    assert [(h["topic_id"], h["offsets"]) for h in ledger.incarnations] == [(first_id, {"0": 10})]
    assert ledger.offset_base[kafka.events_topic] == {0: 10} and ledger.offsets[kafka.events_topic] == {0: 25}
    assert {p: storage.read_bytes(p) for p in old_files} == old_files  # the old incarnation's files untouched
    new = read_events(root).filter(pa.compute.greater_equal(read_events(root).column("offset"), 10))
    assert sorted(new.column("event_id").to_pylist()) == sorted(f"ev-{i}" for i in range(100, 115))  # 10..24
    assert read_dead_letters(root).num_rows == 0
    assert_clean_lake(root)


def test_rewind_after_compaction_re_admits_events_that_stay(kafka_config, ray_head, tmp_path):
    """`precise lake rewind` into a merged file's span: the re-read events are visible (not hidden
    by the merged file, not dead-lettered as duplicates) and survive the next compaction pass."""
    import subprocess
    import sys

    from _ingest_support import REPO
    from precise.store.lake import Layout, load_ledger

    kafka = kafka_config.model_copy(update={"partitions": 1})
    ensure_topics(kafka)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root,
                          ingest={"max_records_per_partition": 4, "compact_min_files": 2, "compact_grace_s": 3600})
    with EventProducer(kafka) as producer:
        for i in range(10):
            producer.send_event(_event(i))
        producer.flush(30)
    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    storage = Files(str(root))
    names = sorted(p.rsplit("/", 1)[-1] for p in storage.list_files(Layout(storage).events))
    assert "p0000-000000000000-000000000010.parquet" in names, names  # merged (sources kept: grace)

    rewound = subprocess.run([sys.executable, "-m", "precise.cli", "lake", "rewind", "--config", str(config),
                              "--offset", "0=6"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert rewound.returncode == 0, rewound.stderr
    ledger = load_ledger(storage)
    assert ledger.offsets[kafka.events_topic] == {0: 6} and ledger.rewinds[-1]["from"] == {"0": 10}
    assert sorted(read_events(root).column("event_id").to_pylist()) == sorted(f"ev-{i}" for i in range(6))

    for _ in range(2):  # re-ingest, then a pass with nothing new (compaction runs at the end of both)
        job = JobProcess(config, "--once")
        assert job.finish(240) == 0, job.log[-4000:]
        ids = read_events(root).column("event_id").to_pylist()
        assert sorted(ids) == sorted(f"ev-{i}" for i in range(10)), ids
    assert read_dead_letters(root).num_rows == 0  # nothing re-read was taken for a duplicate
    assert_clean_lake(root)
