"""Ray Train jobs on real parts: replay ML-100k -> ingest -> universal -> targeted, with lineage."""

from __future__ import annotations

import json

import pytest
import torch

from precise.store.registry import ModelRegistry

pytestmark = pytest.mark.integration

SMALL_MODEL = {"max_len": 50, "id_dim": 16, "text_dim": 16, "token_dim": 16, "num_layers": 1,
               "num_negatives": 32, "dropout": 0.1}


@pytest.fixture(scope="module")
def lake_config(ml100k_copy, tmp_path_factory):
    return ml100k_copy(
        tmp_path_factory.mktemp("root"),
        kafka={"client_options": {"sasl_plain_password": "hunter2"}},  # must never reach the registry
        training={"model": SMALL_MODEL, "text": {"model": "hashed", "max_tokens": 8},
                  "universal": {"epochs": 2, "batch_size": 128}, "targeted": {"epochs": 1, "batch_size": 128},
                  "num_workers": 1, "cpus_per_worker": 0.5})


def test_universal_then_targeted_with_lineage(lake_config):
    from precise.train import recipe
    from precise.train.ray_job import run_training

    registry = ModelRegistry(lake_config.storage.resolved_root())
    universal = run_training(lake_config, "universal")
    assert universal.version.ref == "universal/000001"
    meta = universal.version.metadata
    assert meta["parent_version"] is None and meta["num_items"] == 1682
    assert meta["metrics"]["epoch"] == 2 and meta["metrics"]["val_ndcg_at_10"] > 0
    assert meta["data_window"]["end_ts"] > 0 and meta["ledger"]
    # the registered weights are the best validated epoch's, and the version says which and why
    history = {r["epoch"]: r for r in meta["history"]}
    assert meta["selected_by"]["metric"] == "N@10" and meta["selected_by"]["on"] == "validation"
    best = meta["selected_by"]["epoch"]
    assert history[best]["val_ndcg_at_10"] == max(r["val_ndcg_at_10"] for r in history.values())
    assert meta["sequence_rules"] == {"family": "all", "actions": ["rate"], "scenes": None, "max_len": 50}
    assert "hunter2" not in json.dumps(meta)  # credentials are not recorded

    # the targeted job starts from exactly the LATEST universal weights (every shared parameter)
    setup = recipe.setup(lake_config, "targeted")
    initial = setup.payload.initial_state
    ut_state = registry.load_state_dict(registry.latest("universal"))
    shared = [k for k in initial if k in ut_state]
    assert len(shared) >= 10 and setup.lineage["warm_started_parameters"] == len(shared)
    for key in shared:
        expected = ut_state[key][: initial[key].shape[0]]
        assert torch.equal(initial[key], expected), key

    targeted = run_training(lake_config, "targeted")
    assert targeted.version.ref == "targeted/like/000001"
    assert targeted.version.metadata["warm_started_from"] == "universal/000001"
    assert targeted.version.metadata["history"][0]["epoch"] == 0  # the warm start itself is validated
    assert targeted.version.metadata["sequence_rules"]["family"] == "like"
    assert registry.latest("targeted", "like").version == "000001"

    # a second universal run continues from the first (incremental: nothing new since it)
    second = run_training(lake_config, "universal", num_workers=1)
    assert second.version.metadata["parent_version"] == "universal/000001"
    assert second.version.metadata["data_window"]["since_ts"] == meta["data_window"]["end_ts"]


def test_registry_embedder_serves_the_trained_model(lake_config):
    """The serving Embedder over the registered model: known items from the trained tower, a new
    item from its text alone (cold start), users from their sequences."""
    import numpy as np

    from precise.predict.model_embedder import RegistryEmbedder
    from precise.train.ray_job import run_training

    root = lake_config.storage.resolved_root()
    registry = ModelRegistry(root)
    if registry.latest("targeted", "like") is None:  # this test may run alone
        run_training(lake_config, "universal")
        run_training(lake_config, "targeted")
    embedder = RegistryEmbedder(root, kind="targeted", task="like")
    assert embedder.model_version == registry.latest("targeted", "like").ref
    known = embedder.embed_items(["1", "50"], None)
    assert np.allclose(known[0], embedder.raw_table[embedder.lookup["1"]].numpy())
    cold = embedder.embed_items(["brand-new"], ["Brand New Movie (2026). Genres: Comedy, Romance"])
    assert cold.shape == (1, known.shape[1]) and np.isfinite(cold).all() and np.abs(cold).sum() > 0
    user = embedder.embed_user_sequence(["1", "50", "not-in-vocab", "181"])
    assert user.shape == (known.shape[1],) and np.isfinite(user).all()
    with pytest.raises(KeyError, match="no text"):
        embedder.embed_items(["brand-new"], None)
    with pytest.raises(KeyError, match="no item of the sequence"):
        embedder.embed_user_sequence(["nope"])


def test_preemption_watcher_runs_only_when_the_config_asks(lake_config):
    """`training.preemption_watcher` decides whether Ray Train starts its PreemptionWatcher actor
    for a run (off by default: on one node it only takes CPU from the workers)."""
    from ray.util.state import list_actors

    from precise.train.ray_job import run_training

    def watchers() -> int:  # every one this cluster started, dead ones included
        return len(list_actors(filters=[("class_name", "=", "PreemptionWatcher")], limit=10_000))

    before = watchers()
    config = lake_config.model_copy(deep=True)
    config.training.universal.epochs = 1
    assert config.training.preemption_watcher is False
    run_training(config, "universal", full=True)
    assert watchers() == before
    config.training.preemption_watcher = True
    run_training(config, "universal", full=True)
    assert watchers() == before + 1
