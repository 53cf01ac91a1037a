"""The whole pipeline on the real broker and Ray, with poison in the stream: ingest, universal and
targeted training, prediction from the lake, publish, and Serve answering U2I over HTTP; then a
replica that starts after a newer model was registered still serves the published snapshot.

Malformed records of every kind the validator knows (precise.ingest.validate.REASON_KINDS) sit in
the topics before the first ingest. They must be dead-lettered and nothing downstream may see them:
prediction reads the lake's validated sequences, never the raw topic."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests
import yaml

from precise.config import PreciseConfig
from precise.data import SyntheticConfig, generate_synthetic
from precise.events.producer import EventProducer
from precise.events.replay import replay
from precise.ingest.validate import REASON_KINDS
from precise.stack.process import free_port
from precise.store.lake import read_dead_letters

pytestmark = pytest.mark.integration


def poison(now_ms: int) -> dict[str, tuple[str, bytes | None]]:
    """reason_kind -> (topic role, raw value): one record of every kind."""
    event = {"event_id": "p-1", "user_id": "u-p", "item_id": "i-p", "scene": "s", "action": "click",
             "ts": now_ms - 1000}

    def raw(**changes: object) -> bytes:
        return json.dumps({k: v for k, v in {**event, **changes}.items() if v is not ...}).encode()

    return {
        "oversized": ("events", raw(description="x" * 70_000)),
        "empty": ("events", None),
        "not_utf8": ("events", b'{"event_id": "\xc3\x28\xff"}'),
        "invalid_json": ("events", raw()[:-5]),
        "not_object": ("events", b"[1, 2]"),
        "missing_field": ("events", raw(item_id=...)),
        "wrong_type": ("events", raw(user_id={"nested": "object"})),  # the record that stopped predict
        "empty_id": ("events", raw(event_id="  ")),
        "null_bytes": ("events", raw(user_id="u\u0000p")),
        "invalid_timestamp": ("events", raw(ts=now_ms + 30 * 86_400_000)),
        "action_not_allowed": ("events", raw(action="teleport")),
        "invalid_field": ("events", raw(event_id="e" * 600)),
        "item_missing_field": ("items", json.dumps({"item_id": "i-bad"}).encode()),
    }


def test_pipeline_with_poison_publishes_and_serves_the_trained_model(kafka_broker, ray_head, tmp_path):
    from ray import serve

    from precise.pipeline.orchestrator import Pipeline
    from precise.store.registry import ModelRegistry
    from precise.store.snapshots import SnapshotStore, read_users
    from precise.train.ray_job import run_training
    from serve.app import app

    tag = uuid.uuid4().hex[:8]
    raw = {
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"ev-{tag}",
                  "items_topic": f"it-{tag}", "dead_letter_topic": f"ev-{tag}.dlq", "partitions": 2},
        "storage": {"root": str(tmp_path)},
        "sequences": {"max_len": 50, "buckets": 2, "all_scene": {"name": "all", "actions": ["click"]},
                      "targets": [{"name": "like", "actions": ["like"]}]},
        "training": {"model": {"fusion": "id", "max_len": 20, "id_dim": 8, "num_layers": 1, "num_negatives": 16},
                     "universal": {"epochs": 1}, "targeted": {"epochs": 1}, "num_workers": 1,
                     "cpus_per_worker": 0.5},
        "pipeline": {"cycle_s": 86_400, "max_cycles": 1, "predict": True, "item_cycle_s": 0},  # full cycles only
        "predict": {"task": f"snap{tag}", "actor_num_cpus": 0.25, "batch_size": 256},
        "serve": {"task": f"snap{tag}", "poll_interval_s": 0.5, "recent_enabled": False,
                  "recall": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1}},
    }
    config = PreciseConfig.model_validate(raw)
    stream = generate_synthetic(SyntheticConfig(users=120, initial_items=50, new_items_per_day=15, days=3,
                                                events_per_second=0.03, seed=9))
    replay(stream, config.kafka, progress=False)
    now_ms = int(time.time() * 1000)
    records = poison(now_ms)
    duplicate = stream.events.iloc[0].to_dict()
    with EventProducer(config.kafka) as producer:
        for role, value in records.values():
            topic = config.kafka.events_topic if role == "events" else config.kafka.items_topic
            producer.send_raw(topic, value, key=b"u-p").get(timeout=30)
        producer.send_raw(config.kafka.events_topic, json.dumps({k: (int(v) if k == "ts" else v) for k, v in
                                                                 duplicate.items() if v == v}).encode(),
                          key=str(duplicate["user_id"]).encode()).get(timeout=30)

    summary = Pipeline(config).run()
    assert summary["cycles_run"] == 1
    kinds = set(read_dead_letters(tmp_path).column("reason_kind").to_pylist())
    assert kinds == set(REASON_KINDS), set(REASON_KINDS) ^ kinds  # every kind the validator knows

    store = SnapshotStore(tmp_path, f"snap{tag}")
    published = store.latest()
    registry = ModelRegistry(tmp_path)
    targeted = registry.latest("targeted", "like")
    assert published.manifest["model_version"] == targeted.ref
    assert published.manifest["embedder"]["kwargs"]["version"] == targeted.version  # pinned
    assert published.manifest["sequence_rules"] == targeted.metadata["sequence_rules"]
    assert published.manifest["sources"]["users_from"] == "lake"
    # the targeted model embeds users from its own family (likes), not from every action
    users = read_users(published)[0]
    assert "u-p" not in users and len(users) > 0

    # a newer targeted model is registered but not published: a replica starting now must serve the
    # published snapshot with the model version it names, not the registry's LATEST
    newer = run_training(config, "targeted")
    assert newer.version.version > targeted.version and store.latest_version() == published.version
    config_path = tmp_path / "platform.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    try:
        serve.run(app({"config": str(config_path)}), name=f"e2e-{tag}", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        version = requests.get(url + "/v1/version", timeout=10).json()
        assert (version["snapshot_version"], version["model_version"]) == (published.version, targeted.ref)
        answer = requests.post(url + "/v1/recall/u2i", json={"user_id": users[0], "k": 5}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == targeted.ref and len(answer.json()["items"]) == 5
        assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    finally:
        serve.shutdown()
