"""The event-time orchestrator and the figure 4a measure."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest

from precise.config import PreciseConfig
from precise.data import SyntheticConfig, generate_synthetic
from precise.events.replay import replay
from precise.pipeline.exposure import cycle_boundaries, exposure_shares, trained_share
from precise.store.registry import ModelRegistry

DAY = 86_400_000


def test_exposure_shares_by_hand():
    # day 0: items a, b trained; day 1: a, c exposed; day 2: a, c, d exposed
    events = pd.DataFrame({
        "item_id": ["a", "b", "a", "c", "a", "c", "d"],
        "ts": [10, 20, DAY + 1, DAY + 2, 2 * DAY + 1, 2 * DAY + 2, 2 * DAY + 3],
        "action": ["rate"] * 7,
    })
    shares = exposure_shares(events, [DAY, 2 * DAY, 3 * DAY], ["rate"])
    assert shares.exposed == [2, 3]
    assert shares.periodic == [0.5, pytest.approx(2 / 3)]  # day 2: a, c trained before day 2
    assert shares.once == [0.5, pytest.approx(1 / 3)]  # only a was trained before day 1
    assert trained_share(events, 2 * DAY, 3 * DAY, DAY, ["rate"]) == (3, pytest.approx(1 / 3))
    assert cycle_boundaries(5, 3 * DAY + 7, DAY) == [DAY, 2 * DAY, 3 * DAY]
    with pytest.raises(ValueError, match="period must be > 0"):
        cycle_boundaries(0, 10, 0)


@pytest.mark.integration
def test_two_daily_cycles_with_periodic_warmup(kafka_broker, ray_head, tmp_path):
    tag = uuid.uuid4().hex[:8]
    config = PreciseConfig.model_validate({
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"ev-{tag}",
                  "items_topic": f"it-{tag}", "dead_letter_topic": f"ev-{tag}.dlq", "partitions": 2},
        "storage": {"root": str(tmp_path)},
        "ingest": {"publish_dead_letters": False},
        # stored window (200) longer than the model's (20): earlier cycles are re-cut from it
        "sequences": {"max_len": 200, "buckets": 2, "all_scene": {"name": "all", "actions": ["click"]},
                      "targets": [{"name": "like", "actions": ["like"]}]},
        "training": {"model": {"fusion": "id", "max_len": 20, "id_dim": 8, "num_layers": 1,
                               "num_negatives": 16},
                     "universal": {"epochs": 1}, "targeted": {"epochs": 1},
                     "num_workers": 1, "cpus_per_worker": 0.5},
        "pipeline": {"cycle_s": 86_400, "max_cycles": 2, "predict": False},
    })
    stream = generate_synthetic(SyntheticConfig(users=150, initial_items=60, new_items_per_day=20, days=4,
                                                events_per_second=0.03, seed=5))
    replay(stream, config.kafka, progress=False)
    from precise.pipeline.orchestrator import Pipeline

    summary = Pipeline(config).run()
    assert summary["cycles_run"] == 2
    cycles = tmp_path / "pipeline" / "periodic" / "cycles"
    reports = [json.loads(p.read_text()) for p in sorted(cycles.glob("*.json"))]
    assert [r["cycle"] for r in reports] == [1, 2]
    assert reports[1]["boundary_ts"] - reports[0]["boundary_ts"] == DAY
    registry = ModelRegistry(tmp_path)
    ut = [registry.get("universal", v) for v in registry.versions("universal")]
    tt = [registry.get("targeted", v, "like") for v in registry.versions("targeted", "like")]
    assert [m.metadata["parent_version"] for m in ut] == [None, "universal/000001"]
    # periodical warm-up: each cycle's targeted model starts from that cycle's universal model
    assert [m.metadata["warm_started_from"] for m in tt] == ["universal/000001", "universal/000002"]
    assert [m.metadata["data_window"]["until_ts"] for m in ut] == [r["boundary_ts"] for r in reports]
    assert all(0 < r["exposure"]["trained_share"] <= 1 for r in reports)

    # a restarted orchestrator continues after the done cycles
    again = Pipeline(config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"max_cycles": 1})}))
    assert again.state()["done_boundaries"] == [r["boundary_ts"] for r in reports]


@pytest.mark.integration
def test_the_gate_publishes_the_universal_model_when_targeted_training_loses(kafka_broker, ml100k_copy, tmp_path):
    """A targeted model with a random head (head_residual off, never trained: lr 0) scores below the
    universal model on the target task's validation: the cycle publishes the universal model, and
    its report and the snapshot say so."""
    from precise.pipeline.orchestrator import Pipeline
    from precise.store.files import Files
    from precise.store.lake import load_ledger
    from precise.store.snapshots import SnapshotStore

    config = ml100k_copy(tmp_path)
    ledger = load_ledger(Files(tmp_path))
    config = PreciseConfig.model_validate({
        **config.model_dump(mode="json"),
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": ledger.events_topic,
                  "items_topic": ledger.items_topic, "dead_letter_topic": f"{ledger.events_topic}.dlq"},
        "ingest": {"publish_dead_letters": False, "compact_min_files": 0},
        "training": {"model": {"fusion": "id", "max_len": 50, "id_dim": 16, "num_layers": 1, "num_negatives": 32,
                               "head_residual": False},
                     "universal": {"epochs": 2, "batch_size": 128, "lr": 3e-3},
                     "targeted": {"epochs": 1, "lr": 0.0}, "num_workers": 1, "cpus_per_worker": 0.5},
        "pipeline": {"cycle_s": 30 * 86_400, "warmup_cycles": 6, "max_cycles": 1, "predict": True},
        "predict": {"task": "gate", "actor_num_cpus": 0.25, "batch_size": 512},
    })
    assert Pipeline(config).run()["cycles_run"] == 1
    (path,) = sorted((tmp_path / "pipeline" / "periodic" / "cycles").glob("*.json"))
    gate = json.loads(path.read_text())["gate"]
    assert gate["choice"] == "universal" and gate["published"] == "universal/000001", gate
    assert gate["scores"]["targeted"] < gate["scores"]["universal"] and gate["cases"] > 100, gate
    assert "below the universal model" in gate["reason"]
    snapshot = SnapshotStore(tmp_path, "gate").latest()
    assert snapshot.manifest["model_version"] == "universal/000001"
    assert snapshot.manifest["sequence_rules"]["family"] == "all"  # the universal model's own users


def test_item_cycle_boundary_is_the_newest_since_the_last_cycle(tmp_path):
    from precise.pipeline.orchestrator import Pipeline

    hour = 3_600_000
    config = PreciseConfig.model_validate({"storage": {"root": str(tmp_path)}})
    assert config.pipeline.item_cycle_s == 3_600
    pipeline = Pipeline(config)
    events = pd.DataFrame({"item_id": ["a", "b"], "ts": [DAY - 5, DAY + 3 * hour + 7], "action": ["rate"] * 2})
    assert pipeline.item_boundary(events, {"done_boundaries": []}) is None  # no full cycle yet
    assert pipeline.item_boundary(events, {"done_boundaries": [DAY]}) == DAY + 3 * hour
    assert pipeline.item_boundary(events, {"done_boundaries": [DAY], "item_boundaries": [DAY + 3 * hour]}) is None
    assert pipeline.item_boundary(events, {"done_boundaries": [DAY + 3 * hour]}) is None
    off = Pipeline(PreciseConfig.model_validate({"storage": {"root": str(tmp_path)},
                                                 "pipeline": {"item_cycle_s": 0}}))
    assert off.item_boundary(events, {"done_boundaries": [DAY]}) is None


@pytest.mark.integration
def test_the_run_loop_runs_item_cycles_that_embed_only_new_and_changed_items(kafka_broker, ray_head, tmp_path):
    """Pipeline.run() (ingest, then the item cycle its watermark calls for) after a full cycle's
    snapshot: one item cycle embeds the new item and the changed one only, publishes them as a
    delta with the deletion, and the next embeds nothing because nothing changed."""
    import numpy as np

    from precise.events.producer import EventProducer
    from precise.events.topics import ensure_topics
    from precise.ingest.job import IngestJob
    from precise.pipeline.orchestrator import Pipeline
    from precise.predict.embedders import HashingTextEncoder, write_vector_table
    from precise.predict.job import run_predict
    from precise.serving.state import load_served_snapshot
    from precise.store.pipeline import PipelineRecords
    from precise.store.snapshots import SnapshotStore, read_items
    from precise.vectors import normalize

    hour, tag = 3_600_000, uuid.uuid4().hex[:8]
    table = tmp_path / "vectors.parquet"  # the "model": vectors of i0..i24; i25..i29 are text-only items
    write_vector_table(table, [f"i{n}" for n in range(25)],
                       np.random.default_rng(0).standard_normal((25, 8)).astype(np.float32))
    config = PreciseConfig.model_validate({
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"ev-{tag}",
                  "items_topic": f"it-{tag}", "dead_letter_topic": f"ev-{tag}.dlq", "partitions": 2},
        "storage": {"root": str(tmp_path)},
        "ingest": {"publish_dead_letters": False},
        "pipeline": {"cycle_s": 86_400, "item_cycle_s": 3_600, "predict": True},
        "predict": {"task": "items", "actor_num_cpus": 0.25, "batch_size": 64, "sequence_family": "all",
                    "embedder": {"kwargs": {"items_path": str(table), "model_version": "table-1"}}},
    })
    ensure_topics(config.kafka)
    with EventProducer(config.kafka) as producer:
        for n in range(30):
            producer.send_item({"item_id": f"i{n}", "text": f"film {n} about topic {n % 4}", "created_ts": DAY})
        for n in range(40):
            producer.send_event({"event_id": f"e{n}", "user_id": f"u{n % 8}", "item_id": f"i{n % 25}",
                                 "scene": "s", "action": "rate", "ts": DAY + hour + n})
        producer.flush()
    IngestJob(config).run_once()
    base = run_predict(config).snapshot  # the full cycle at DAY published this, with the text hashes
    records = PipelineRecords(str(tmp_path), "periodic")
    records.save_state({"done_boundaries": [DAY], "reports": []})

    with EventProducer(config.kafka) as producer:
        producer.send_item({"item_id": "new-1", "text": "a documentary about deep sea creatures", "created_ts": DAY})
        producer.send_item({"item_id": "i27", "text": "film 27 recut as a musical", "created_ts": DAY})  # changed
        producer.send_item({"item_id": "i3", "text": "film 3 about topic 3", "created_ts": DAY})  # same text
        producer.delete_item("i5")
        producer.send_event({"event_id": "late", "user_id": "u1", "item_id": "i1", "scene": "s", "action": "rate",
                             "ts": DAY + 3 * hour + 5})  # the watermark passes the item boundary DAY + 3 h
        producer.flush()
    summary = Pipeline(config).run()
    assert summary["cycles_run"] == 0  # no full-cycle boundary passed: only the item cycle ran
    assert records.state()["item_boundaries"] == [DAY + 3 * hour]
    store = SnapshotStore(tmp_path, "items")
    delta = store.latest()
    assert delta.manifest["base"] == base.version and delta.manifest["model_version"] == "table-1"
    assert delta.manifest["embedded"]["embedded"] == 2  # new-1 and i27 went through the model, nothing else
    assert (delta.manifest["embedded"]["new"], delta.manifest["embedded"]["changed"]) == (1, 1)
    assert delta.manifest["item_delta"] == {"items": 2, "deleted": 1} and delta.manifest["num_items"] == 30
    ids, vectors = read_items(delta)
    assert "i5" not in ids and {"new-1", "i27"} <= set(ids)
    musical = normalize(HashingTextEncoder(8).encode("film 27 recut as a musical"))
    assert np.allclose(vectors[ids.index("i27")], musical, atol=1e-5)
    served = load_served_snapshot(delta, ["precise."])
    _, rows = served.search(vectors, 30)  # full ranking from every item's vector: i5 never comes back
    assert "i5" not in {served.item_ids[r] for r in rows.ravel()}
    assert served.item_ids[rows[ids.index("new-1"), 0]] == "new-1"  # the new item is recallable

    with EventProducer(config.kafka) as producer:  # an hour later, the catalogue unchanged
        producer.send_event({"event_id": "later", "user_id": "u2", "item_id": "i2", "scene": "s", "action": "rate",
                             "ts": DAY + 4 * hour + 5})
        producer.flush()
    Pipeline(config).run()
    assert records.state()["item_boundaries"] == [DAY + 3 * hour, DAY + 4 * hour]
    assert store.latest_version() == delta.version  # nothing embedded, nothing published
