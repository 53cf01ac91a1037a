"""jobs/predict.py: Ray Data batch inference from Parquet inputs, approximate index, model changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from precise.config import PreciseConfig
from precise.predict.demo import publish_random_snapshot
from precise.predict.embedders import TableEmbedder, write_vector_table
from precise.store.snapshots import SnapshotStore, read_items, read_users
from precise.vectors import normalize

REPO = Path(__file__).parents[1]


def _config(tmp_path: Path, table: Path, model_version: str) -> PreciseConfig:
    return PreciseConfig.model_validate({
        "storage": {"root": str(tmp_path / "root")},
        "predict": {
            "task": "pq", "items_from": "parquet", "items_path": str(tmp_path / "items.parquet"),
            "users_from": "parquet", "sequences_path": str(tmp_path / "seq.parquet"),
            "actor_num_cpus": 0.25, "batch_size": 100,
            "embedder": {"kwargs": {"items_path": str(table), "model_version": model_version}},
            "index": {"exact_max_items": 100, "approximate": "hnsw", "recall_queries": 50},
        },
    })


@pytest.mark.integration
def test_predict_from_parquet_with_an_hnsw_index(ray_head, tmp_path):
    from precise.predict.job import run_predict

    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(300)]
    table = tmp_path / "vectors.parquet"
    write_vector_table(table, ids[:290], rng.standard_normal((290, 8)).astype(np.float32))  # 10 cold items
    pq.write_table(pa.table({"item_id": ids, "text": [f"movie {n} about topic {n % 9}" for n in range(300)]}),
                   tmp_path / "items.parquet")
    sequences = {f"u{n}": [f"i{(n * 7 + j) % 290}" for j in range(5)] for n in range(40)}
    sequences["nobody-known"] = ["x1", "x2"]  # no item the model knows: left out and counted
    pq.write_table(pa.table({"user_id": list(sequences), "item_ids": list(sequences.values())}),
                   tmp_path / "seq.parquet")

    result = run_predict(_config(tmp_path, table, "v1"), cycle="all")
    m = result.snapshot.manifest
    assert (m["num_items"], m["num_users"], m["users_skipped"]) == (300, 40, 1)
    assert m["index"]["type"] == "hnsw" and m["index"]["recall_at_k"] > 0.8 and m["index"]["recall_queries"] == 40
    assert m["sources"]["items_from"] == "parquet" and m["model_version"] == "v1"

    embedder = TableEmbedder(str(table), "v1")
    item_ids, items = read_items(result.snapshot)
    order = [item_ids.index(i) for i in ids]
    assert np.allclose(items[order], normalize(embedder.embed_items(ids, [f"movie {n} about topic {n % 9}"
                                                                         for n in range(300)])), atol=1e-6)
    user_ids, users = read_users(result.snapshot)
    for user, vector in zip(user_ids, users, strict=True):
        assert np.allclose(vector, normalize(embedder.embed_user_sequence(sequences[user])), atol=1e-5)

    # an items-only cycle after a model change cannot reuse the users: it recomputes them
    table2 = tmp_path / "vectors2.parquet"
    write_vector_table(table2, ids[:290], rng.standard_normal((290, 8)).astype(np.float32))
    result2 = run_predict(_config(tmp_path, table2, "v2"), cycle="items")
    assert result2.users_reused_from is None and result2.snapshot.manifest["model_version"] == "v2"
    assert SnapshotStore(tmp_path / "root", "pq").latest_version() == result2.snapshot.version


def test_predict_cli_reports_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("predict:\n  items_from: parquet\n")
    done = subprocess.run([sys.executable, "jobs/predict.py", "--config", str(path), "--root", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "predict.items_path is not set" in done.stderr
    path.write_text("predict:\n  index:\n    approximate: annoy\n")
    done = subprocess.run([sys.executable, "jobs/predict.py", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "predict.index.approximate" in done.stderr


def test_predict_cli_delta_cycle_needs_a_snapshot_to_be_a_delta_of(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("predict:\n  task: fresh\n")
    done = subprocess.run([sys.executable, "jobs/predict.py", "--config", str(path), "--root", str(tmp_path),
                           "--cycle", "delta"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "has no snapshot yet: run --cycle all first" in done.stderr


def test_demo_cli_publishes_a_snapshot(tmp_path):
    done = subprocess.run([sys.executable, "-m", "precise.predict.demo", "--root", str(tmp_path), "--task", "d",
                           "--users", "10", "--items", "20", "--dim", "4"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == "000001"
    assert SnapshotStore(tmp_path, "d").latest().manifest["num_items"] == 20


def test_demo_cli_refuses_to_cover_a_real_models_snapshot(tmp_path):
    # a snapshot of a real model (not "random-*") is what the task serves: the demo must not replace it
    publish_random_snapshot(tmp_path, "d", users=2, items=5, dim=4, seed=0, model_version="universal-000001")
    cmd = [sys.executable, "-m", "precise.predict.demo", "--root", str(tmp_path), "--task", "d",
           "--users", "3", "--items", "6", "--dim", "4"]
    refused = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert SnapshotStore(tmp_path, "d").versions() == ["000001"]
    forced = subprocess.run([*cmd, "--force"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert SnapshotStore(tmp_path, "d").latest_version() == "000002"
