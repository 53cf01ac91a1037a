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
