"""Embedding snapshots, FAISS index choice and recall, the TableEmbedder, and loading for serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from precise.config import IndexConfig
from precise.predict.demo import publish_random_snapshot
from precise.predict.embedder import EmbedderError, load_embedder
from precise.predict.embedders import HashingTextEncoder, TableEmbedder, write_vector_table
from precise.predict.index import FLAT, HNSW, IVF, build_and_measure, index_builder, search
from precise.serving.state import NotFoundError, load_served_snapshot
from precise.store.snapshots import SnapshotError, SnapshotStore
from precise.vectors import normalize


def _vectors(n, d, seed=0):
    return normalize(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


@pytest.mark.parametrize(("approximate", "kind"), [("hnsw", HNSW), ("ivf", IVF)])
def test_index_type_follows_catalogue_size_and_recall_is_measured(approximate, kind):
    items, queries = _vectors(3000, 32), _vectors(200, 32, seed=1)
    small = IndexConfig(exact_max_items=5000, approximate=approximate, recall_queries=200)
    index, info = build_and_measure(items, queries, small)
    assert info.type == FLAT and info.recall_at_k == 1.0 and info.recall_queries == 200

    large = IndexConfig(exact_max_items=1000, approximate=approximate, recall_queries=200, ivf_nprobe=8)
    index, info = build_and_measure(items, queries, large)
    assert info.type == kind
    assert 0.5 < info.recall_at_k <= 1.0  # approximate, but far better than chance (10/3000)
    # the recorded recall is what search() delivers with the recorded parameters
    exact = items @ queries.T
    _, ids = search(index, queries, 10, info)
    hits = np.mean([len(set(ids[q]) & set(np.argsort(-exact[:, q])[:10])) / 10 for q in range(200)])
    assert abs(hits - info.recall_at_k) < 1e-6


def test_ivf_recall_drops_when_probing_fewer_lists():
    items, queries = _vectors(4000, 32), _vectors(200, 32, seed=1)
    many = build_and_measure(items, queries, IndexConfig(exact_max_items=10, approximate="ivf", ivf_nprobe=32))[1]
    one = build_and_measure(items, queries, IndexConfig(exact_max_items=10, approximate="ivf", ivf_nprobe=1))[1]
    assert one.recall_at_k < many.recall_at_k


def test_snapshot_layout_manifest_and_atomic_latest(tmp_path):
    ref, vecs = publish_random_snapshot(tmp_path, "t", users=50, items=200, dim=16, seed=3, model_version="m1")
    store = SnapshotStore(tmp_path, "t")
    assert ref.version == "000001" and store.latest_version() == "000001"
    names = sorted(p.name for p in ref.path.iterdir())
    assert names == ["index.faiss", "item_id_map.parquet", "items.parquet", "manifest.json", "users"]
    manifest = json.loads((ref.path / "manifest.json").read_text())
    assert manifest["version"] == "000001" and manifest["model_version"] == "m1"
    assert (manifest["num_users"], manifest["num_items"], manifest["dim"]) == (50, 200, 16)
    assert manifest["index"]["type"] == FLAT and manifest["index"]["recall_at_k"] == 1.0
    assert manifest["embedder"]["import_path"] == "precise.predict.embedders:TableEmbedder"
    assert manifest["created_at"].endswith("+00:00")
    # no temp files left next to LATEST, no staging folders
    assert sorted(p.name for p in store.dir.iterdir()) == [".latest.lock", "000001", "LATEST"]

    ref2, _ = publish_random_snapshot(tmp_path, "t", users=5, items=20, dim=16, seed=4, model_version="m2")
    assert ref2.version == "000002" and store.latest().manifest["model_version"] == "m2"
    # LATEST only moves forwards
    assert not store.files.advance_pointer(store.dir / "LATEST", "000001")
    assert store.latest_version() == "000002"


def test_failed_write_leaves_nothing_and_latest_untouched(tmp_path):
    publish_random_snapshot(tmp_path, "t", users=5, items=20, dim=8, seed=0, model_version="m1")
    store = SnapshotStore(tmp_path, "t")
    with pytest.raises(SnapshotError, match="dim 4, item vectors 8"):
        with store.writer() as writer:
            writer.write_items(["a", "b"], np.ones((2, 8), np.float32))
            writer.write_users(["u"], np.ones((1, 4), np.float32))
            writer.publish("m2", {}, index_builder(IndexConfig()))
    with pytest.raises(SnapshotError, match="NaN"):
        with store.writer() as writer:
            writer.write_items(["a"], np.array([[np.nan] * 8], np.float32))
    assert store.versions() == ["000001"] and store.latest_version() == "000001"
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".staging")]


def test_prune_keeps_newest(tmp_path):
    for seed in range(4):
        publish_random_snapshot(tmp_path, "t", users=2, items=5, dim=4, seed=seed, model_version="m")
    store = SnapshotStore(tmp_path, "t")
    assert store.prune(keep=2) == ["000001", "000002"]
    assert store.versions() == ["000003", "000004"] and store.latest_version() == "000004"


def test_object_store_roots_are_refused():
    with pytest.raises(SnapshotError, match="only local"):
        SnapshotStore("s3://bucket/x", "t")


def test_table_embedder_ids_text_and_sequences(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    write_vector_table(tmp_path / "v.parquet", ["a", "b", "c", "d"], vectors)
    emb = TableEmbedder(str(tmp_path / "v.parquet"), model_version="m")
    out = emb.embed_items(["b", "new"], ["ignored", "a brand new film about cats"])
    assert np.array_equal(out[0], vectors[1])
    assert np.allclose(out[1], HashingTextEncoder(4).encode("A brand new FILM about cats!"))
    with pytest.raises(KeyError, match="no text"):
        emb.embed_items(["nope"], None)
    # the newest item weighs most
    user = emb.embed_user_sequence(["a", "zzz", "b"])
    assert user[1] > user[0] > 0 and user[2] == 0
    with pytest.raises(KeyError):
        emb.embed_user_sequence(["x", "y"])


def test_text_encoder_is_stable_and_similar_texts_are_close():
    enc = HashingTextEncoder(64)
    a, b, c = (normalize(enc.encode(t)) for t in ("space war robots", "robots war in space", "romantic comedy"))
    assert np.allclose(a, normalize(HashingTextEncoder(64).encode("space war robots")))
    assert a @ b > 0.8 and abs(a @ c) < 0.5  # 3 of 4 words shared vs none


def test_load_embedder_errors():
    with pytest.raises(EmbedderError, match="must look like"):
        load_embedder("nocolon")
    with pytest.raises(EmbedderError, match="not under an allowed prefix"):
        load_embedder("os:system", {}, ["precise."])
    with pytest.raises(EmbedderError, match="cannot import"):
        load_embedder("precise.nothing_here:X")
    with pytest.raises(EmbedderError, match="does not implement"):
        load_embedder("collections:OrderedDict")


def test_served_snapshot_is_checked_against_its_manifest(tmp_path):
    ref, vecs = publish_random_snapshot(tmp_path, "t", users=30, items=100, dim=8, seed=1, model_version="m1")
    served = load_served_snapshot(ref, ["precise."])
    assert served.version == "000001" and served.model_version == "m1" and served.dim == 8
    assert np.allclose(served.user_vector("u3"), vecs.users[3])
    scores, ids = served.search(vecs.users[:2], 5)
    assert np.array_equal(ids[0], np.argsort(-(vecs.items @ vecs.users[0]))[:5])
    vector, ignored = served.embed_sequence(["i1", "nope", "i2"])
    assert ignored == ["nope"] and abs(np.linalg.norm(vector) - 1) < 1e-5
    with pytest.raises(NotFoundError):
        served.embed_sequence(["nope"])

    # an embedder of another model version must not serve this index
    manifest = dict(ref.manifest, model_version="m0")
    with pytest.raises(SnapshotError, match="made by model m0 but its embedder loads model m1"):
        load_served_snapshot(type(ref)(ref.task, ref.version, ref.path, manifest), ["precise."])
    # counts that disagree with the files
    manifest = dict(ref.manifest, num_users=31)
    with pytest.raises(SnapshotError, match="30 users, manifest says 31"):
        load_served_snapshot(type(ref)(ref.task, ref.version, ref.path, manifest), ["precise."])
    # an embedder outside the allow-list
    manifest = dict(ref.manifest, embedder={"import_path": "os:system", "kwargs": {}})
    with pytest.raises(SnapshotError, match="allowed prefix"):
        load_served_snapshot(type(ref)(ref.task, ref.version, ref.path, manifest), ["precise."])


def test_watcher_swaps_forward_and_keeps_serving_through_a_broken_snapshot(tmp_path):
    from precise.serving.swap import SnapshotWatcher

    store = SnapshotStore(tmp_path, "t")
    seen: list[str] = []  # what the replica's metrics hear of: each swap and each refusal

    def broken_observer(task: str) -> None:
        seen.append(f"refused {task}")
        raise RuntimeError("an observer failing must not stop the watcher")

    watcher = SnapshotWatcher(store, poll_interval_s=3600, allowed_prefixes=["precise."],
                              on_swap=lambda snapshot: seen.append(f"swap {snapshot.version}"),
                              on_refused=broken_observer)
    assert not watcher.poll_once() and watcher.current is None  # nothing published yet: healthz says waiting
    publish_random_snapshot(tmp_path, "t", users=5, items=20, dim=8, seed=0, model_version="m1")
    assert watcher.poll_once() and watcher.current.version == "000001"
    first = watcher.current

    ref2, _ = publish_random_snapshot(tmp_path, "t", users=5, items=20, dim=8, seed=1, model_version="m2")
    (ref2.path / "index.faiss").write_bytes(b"not an index")  # corrupted after publishing
    assert not watcher.poll_once()
    assert watcher.current is first and "000002 not served" in watcher.last_error
    assert not watcher.poll_once()  # not retried until LATEST moves

    publish_random_snapshot(tmp_path, "t", users=5, items=20, dim=8, seed=2, model_version="m3")
    assert watcher.poll_once() and watcher.current.version == "000003" and watcher.last_error is None
    assert first.search(first.item_vectors[:1], 1)[1][0, 0] == 0  # an old reference still answers
    assert watcher.describe()["swaps"] == 2
    assert seen == ["swap 000001", "refused t", "swap 000003"]


def test_an_item_delta_serves_new_and_changed_items_and_drops_deleted_ones_without_a_rebuild(tmp_path):
    """An item cycle's delta over a full snapshot: read back as the effective catalogue, served on
    top of the base's own index (the same FAISS object), version consistent, and its base kept."""
    from precise.serving.swap import SnapshotWatcher
    from precise.store.snapshots import base_ref, read_item_hashes, read_items, read_users

    base, vecs = publish_random_snapshot(tmp_path, "t", users=10, items=50, dim=8, seed=4, model_version="m1")
    store = SnapshotStore(tmp_path, "t")
    watcher = SnapshotWatcher(store, poll_interval_s=3600, allowed_prefixes=["precise."])
    assert watcher.poll_once()
    full = watcher.current
    new, changed = _vectors(1, 8, seed=7)[0], _vectors(1, 8, seed=8)[0]
    with pytest.raises(SnapshotError, match="never mixes model versions"):
        store.publish_item_delta(base, ["new-1"], new[None], ["h"], [], "m2")
    with pytest.raises(SnapshotError, match="not in base"):
        store.publish_item_delta(base, [], np.zeros((0, 8), np.float32), [], ["nope"], "m1")
    delta = store.publish_item_delta(base, ["new-1", "i3"], np.stack([new, changed]), ["h1", "h3"], ["i5"], "m1")
    assert delta.manifest["base"] == base.version and delta.manifest["num_items"] == 50  # +1 new, -1 deleted
    assert delta.manifest["model_version"] == "m1" and base_ref(delta).version == base.version
    ids, items = read_items(delta)
    assert len(ids) == 50 and "i5" not in ids and ids[-2:] == ["new-1", "i3"]
    assert np.allclose(items[-1], changed) and read_users(delta)[0] == read_users(base)[0]
    hashes = read_item_hashes(delta)
    assert hashes["new-1"] == "h1" and hashes["i3"] == "h3" and "i5" not in hashes and hashes["i0"] is None

    assert watcher.poll_once()
    served = watcher.current
    assert served.version == delta.version and served.base is full and served.index is full.index  # no rebuild
    assert served.num_items == 50 and served.item_vector("i5") is None
    assert np.allclose(served.item_vector("i3"), changed) and np.allclose(served.item_vector("new-1"), new)
    # full ranking over every item: exactly brute force over the effective catalogue
    queries = np.concatenate([vecs.users, new[None], vecs.items[5:6]])
    scores, rows = served.search(queries, 50)
    for q in range(len(queries)):
        want = np.argsort(-(items @ queries[q]), kind="stable")
        assert [served.item_ids[r] for r in rows[q]] == [ids[n] for n in want]
        assert np.allclose(scores[q], (items @ queries[q])[want], atol=1e-5)
    assert served.item_ids[served.search(new[None], 1)[1][0, 0]] == "new-1"
    # the next delta replaces this one (cumulative over the same base), applied to the same base
    again = store.publish_item_delta(base, ["new-1"], new[None], ["h1"], ["i5", "i6"], "m1")
    assert watcher.poll_once() and watcher.current.base is full and watcher.current.num_items == 49
    assert np.allclose(watcher.current.item_vector("i3"), vecs.items[3])  # the old delta's change is gone
    # a replica starting now loads the base from disk and the delta on it
    fresh = load_served_snapshot(store.get(again.version), ["precise."])
    assert fresh.base.version == base.version and fresh.num_items == 49
    assert store.prune(keep=2) == []  # the two newest are deltas over the first: it stays
    assert store.versions() == [base.version, delta.version, again.version]
