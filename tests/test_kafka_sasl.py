"""Kafka security settings against a real broker that authenticates: the local stack's broker with a
SASL_PLAINTEXT listener and PLAIN users. With the right user and password in kafka.client_options,
the producer, topic creation, ingest (offset queries, Ray partition reads) and dead-letter publishing
all work through it; with a wrong password, ingest stops at once with a clear error naming the
settings to fix, not after a hang, and without printing the password."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from _ingest_support import JobProcess, assert_clean_lake, write_config
from precise.config import KafkaConfig
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics, read_topic
from precise.stack import KafkaBroker
from precise.stack.process import free_port
from precise.store.lake import read_dead_letters, read_events

pytestmark = pytest.mark.integration

PASSWORD = "alice-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-sasl"), port=free_port(), controller_port=free_port(),
                         heap="256m", sasl_port=free_port(), sasl_users={"alice": PASSWORD})
    broker.start()
    yield broker
    broker.stop()


def _kafka(broker: KafkaBroker, password: str) -> KafkaConfig:
    tag = uuid.uuid4().hex[:8]
    return KafkaConfig(bootstrap_servers=broker.sasl_bootstrap, events_topic=f"ev-{tag}", items_topic=f"it-{tag}",
                       dead_letter_topic=f"ev-{tag}.dlq", partitions=2,
                       client_options={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                       "sasl_plain_username": "alice", "sasl_plain_password": password})


def test_ingest_and_the_producer_work_with_the_right_credentials(sasl_broker, ray_head, tmp_path):
    kafka = _kafka(sasl_broker, PASSWORD)
    ensure_topics(kafka)
    with EventProducer(kafka) as producer:
        for i in range(20):
            producer.send_event({"event_id": f"ev-{i}", "user_id": f"u{i % 3}", "item_id": f"i{i % 4}",
                                 "scene": "family", "action": "rate", "ts": 1_700_000_000_000 + i})
        producer.send_raw(kafka.events_topic, b"not json", key=b"k").get(timeout=30)
        producer.flush(30)
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka, root, ingest={"publish_dead_letters": True})
    job = JobProcess(config, "--once")
    assert job.finish(240) == 0, job.log[-4000:]
    assert sorted(read_events(root).column("event_id").to_pylist()) == sorted(f"ev-{i}" for i in range(20))
    assert read_dead_letters(root).num_rows == 1
    # the dead-letter copy went through the SASL listener too
    messages = read_topic(kafka.bootstrap_servers, kafka.dead_letter_topic, kafka.client_options, timeout_s=30)
    assert [json.loads(m.value)["reason_kind"] for m in messages] == ["invalid_json"]
    assert_clean_lake(root)


def test_a_wrong_password_stops_ingest_at_once_with_a_clear_error(sasl_broker, ray_head, tmp_path):
    good = _kafka(sasl_broker, PASSWORD)
    ensure_topics(good)
    wrong = good.model_copy(update={"client_options": {**good.client_options, "sasl_plain_password": "not-it-42"}})
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", wrong, root)  # default retries: 5 attempts
    started = time.monotonic()
    job = JobProcess(config, "--once")
    assert job.finish(180) == 1, job.log[-4000:]
    took = time.monotonic() - started
    assert "refused the credentials" in job.log and "Authentication failed" in job.log, job.log[-3000:]
    assert "user 'alice'" in job.log
    assert "not-it-42" not in job.log + job.stdout  # the password is never printed
    assert "giving up after" not in job.log  # not retried: a password does not fix itself
    assert took < 90, took  # the job's own start (Ray) included; no retry loop, no client timeouts
    assert read_events(root).num_rows == 0
