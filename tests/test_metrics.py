"""The operator's view: a short pipeline and the Serve app on the local stack, then the head's
Prometheus endpoint must hold the platform's metrics with the values the run implies.

Every series is picked out by tag values unique to this test (topics, sequence families, snapshot
task), because counters of earlier tests in the same Ray session stay in the endpoint."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
import yaml

from precise.config import PreciseConfig
from precise.data import SyntheticConfig, generate_synthetic
from precise.events.replay import replay
from precise.metrics.prometheus import Sample, platform_series, scrape, value
from precise.stack.process import free_port


def metrics_url(ray_head) -> str:
    return f"http://127.0.0.1:{ray_head.metrics_port}/metrics"


def wait_for(url: str, checks: dict[str, Callable[[list[Sample]], bool]], timeout: float = 90) -> list[Sample]:
    """Scrape until every check holds (Ray exports every ~10 s); fail naming the ones that do not."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        failing = [name for name, check in checks.items() if not check(samples)]
        if not failing:
            return samples
        if time.monotonic() > deadline:
            shown = sorted({(n, v) for n, _, v in samples if n.startswith("ray_precise_")})
            raise AssertionError(f"metrics not as expected: {failing}\nprecise samples: {shown}")
        time.sleep(2)


@pytest.mark.integration
def test_pipeline_and_serving_metrics_reach_prometheus(kafka_broker, ray_head, tmp_path):
    from ray import serve

    from precise.pipeline.orchestrator import Pipeline
    from precise.store.snapshots import SnapshotStore, read_users
    from serve.app import app

    tag = uuid.uuid4().hex[:8]
    family, task, snapshots = f"all{tag}", f"like{tag}", f"snap{tag}"
    raw = {
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"ev-{tag}",
                  "items_topic": f"it-{tag}", "dead_letter_topic": f"ev-{tag}.dlq", "partitions": 2},
        "storage": {"root": str(tmp_path)},
        "ingest": {"publish_dead_letters": False},
        "sequences": {"max_len": 50, "buckets": 2, "all_scene": {"name": family, "actions": ["click"]},
                      "targets": [{"name": task, "actions": ["like"]}]},
        "training": {"target": task,
                     "model": {"fusion": "id", "max_len": 20, "id_dim": 8, "num_layers": 1, "num_negatives": 16},
                     "universal": {"epochs": 1}, "targeted": {"epochs": 1},
                     "num_workers": 1, "cpus_per_worker": 0.5},
        "pipeline": {"cycle_s": 86_400, "max_cycles": 2, "predict": True, "item_cycle_s": 0},  # full cycles only
        "predict": {"task": snapshots, "actor_num_cpus": 0.25, "batch_size": 256},
        "serve": {"task": snapshots, "poll_interval_s": 0.5, "recent_enabled": False,
                  "recall": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1}},
    }
    config = PreciseConfig.model_validate(raw)
    stream = generate_synthetic(SyntheticConfig(users=150, initial_items=60, new_items_per_day=20, days=4,
                                                events_per_second=0.03, seed=5))
    sent = replay(stream, config.kafka, progress=False)
    assert sent.events_sent == len(stream.events) > 0

    summary = Pipeline(config).run()
    assert summary["cycles_run"] == 2

    # Serve the pipeline's newest snapshot and send a counted set of requests.
    config_path = tmp_path / "platform.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    latest = SnapshotStore(tmp_path, snapshots).latest()
    assert latest is not None and latest.version == "000002"
    user = read_users(latest)[0][0]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    try:
        serve.run(app({"config": str(config_path)}), name=f"metrics-{tag}", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with requests.Session() as http:
            ok = [http.post(url + "/v1/recall/u2i", json={"user_id": user, "k": 5}) for _ in range(12)]
            unknown = [http.post(url + "/v1/recall/u2i", json={"user_id": "nobody-" + tag}) for _ in range(4)]
            invalid = [http.post(url + "/v1/recall/u2i", json={"user_id": user, "k": 0}) for _ in range(3)]
        assert [r.status_code for r in ok + unknown + invalid] == [200] * 12 + [404] * 4 + [422] * 3
        assert {r.json()["snapshot_version"] for r in ok} == {"000002"}

        u2i = {"task": snapshots, "endpoint": "/v1/recall/u2i"}
        universal, targeted = {"model": "universal", "task": family}, {"model": "targeted", "task": task}
        events_topic, items_topic = config.kafka.events_topic, config.kafka.items_topic

        def equals(name: str, expected: float, **labels: Any) -> Callable[[list[Sample]], bool]:
            return lambda s: value(s, name, **labels) == expected

        def within(name: str, low: float, high: float, **labels: Any) -> Callable[[list[Sample]], bool]:
            return lambda s: (v := value(s, name, **labels)) is not None and math.isfinite(v) and low <= v <= high

        samples = wait_for(metrics_url(ray_head), {
            # ingest: exactly what was produced, nothing left behind in Kafka
            "ingested events": equals("ray_precise_ingest_events_ingested_total", len(stream.events),
                                      topic=events_topic),
            "ingested items": equals("ray_precise_ingest_events_ingested_total", sent.items_sent, topic=items_topic),
            "lag": equals("ray_precise_ingest_lag_records", 0, topic=events_topic),
            "lag series per partition": lambda s: {lab.get("partition") for n, lab, _ in s if
                                                   n == "ray_precise_ingest_lag_records"
                                                   and lab.get("topic") == events_topic} == {"0", "1"},
            # training: one epoch per model per cycle, two cycles
            "universal epochs": equals("ray_precise_train_epochs_total", 2, **universal),
            "targeted epochs": equals("ray_precise_train_epochs_total", 2, **targeted),
            # each epoch trains at most one window per user
            "universal samples": within("ray_precise_train_samples_total", 1, 2 * 150, **universal),
            "targeted samples": within("ray_precise_train_samples_total", 1, 2 * 150, **targeted),
            "universal loss": within("ray_precise_train_loss", 1e-6, 1e3, **universal),
            "targeted loss": within("ray_precise_train_loss", 1e-6, 1e3, **targeted),
            "validation ndcg": within("ray_precise_train_val_ndcg_at_10", 0, 1, **targeted),
            "samples per second": within("ray_precise_train_samples_per_s", 1e-3, 1e7, **universal),
            "universal version": equals("ray_precise_model_version", 2, **universal),
            "targeted version": equals("ray_precise_model_version", 2, **targeted),
            # prediction and the pipeline
            "snapshot version": equals("ray_precise_snapshot_version", 2, task=snapshots),
            "snapshots published": equals("ray_precise_snapshots_published_total", 2, task=snapshots),
            "index recall": within("ray_precise_snapshot_index_recall", 0.9, 1.0, task=snapshots),
            "cycles": equals("ray_precise_pipeline_cycles_total", 2, mode="periodic", task=task),
            "cycle seconds": within("ray_precise_pipeline_cycle_seconds", 1, 3600, mode="periodic", task=task),
            # serving: every request counted under its status, each one timed
            "u2i 200": equals("ray_precise_serve_requests_total", 12, status=200, **u2i),
            "u2i 404": equals("ray_precise_serve_requests_total", 4, status=404, **u2i),
            "u2i 422": equals("ray_precise_serve_requests_total", 3, status=422, **u2i),
            "u2i timed": equals("ray_precise_serve_request_latency_s_count", 12, status=200, **u2i),
            "u2i latency under 5 s": equals("ray_precise_serve_request_latency_s_bucket", 12, status=200,
                                            le="5.0", **u2i),
            "served snapshot": equals("ray_precise_serve_snapshot_version", 2, task=snapshots),
            "served model": equals("ray_precise_serve_model_version", 2, task=snapshots, model="targeted"),
            "swaps": equals("ray_precise_serve_snapshot_swaps_total", 1, task=snapshots),
        })
        # what `precise stack status --metrics` prints: one line per series of the metric's own tags
        series = platform_series(samples)
        assert series[f"ray_precise_model_version{{model=targeted,task={task}}}"] == 2
        assert series[f"ray_precise_serve_request_latency_s_count{{task={snapshots},endpoint=/v1/recall/u2i,"
                      f"status=200}}"] == 12
    finally:
        serve.shutdown()
