"""Real-time user vectors without Serve: the snapshot stores sequence tails, the live events after
the snapshot extend them, the snapshot's own embedder embeds the result, the cache holds it until
the user's next event."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from precise.predict.demo import publish_random_snapshot
from precise.predict.embedders import TableEmbedder
from precise.serving.realtime import RealtimeUsers, RefreshAhead, live_sequence
from precise.serving.recent import RecentItems
from precise.serving.state import NotFoundError, load_served_snapshot
from precise.store.snapshots import read_user_tails
from precise.vectors import normalize


def test_recent_items_since_returns_only_later_events_oldest_first():
    recent = RecentItems(max_users=10, per_user=10)
    for n, item in enumerate(["a", "b", "c", "d"]):
        recent.add("u", item, 100 + n)
    assert recent.since("u", 101) == (["c", "d"], 103)
    assert recent.since("u", 103) == ([], 0)
    assert recent.since("nobody", 0) == ([], 0)


def test_live_sequence_moves_repeated_items_to_the_end_and_keeps_max_len():
    assert live_sequence(["a", "b", "c"], ["b", "x"], 10) == ["a", "c", "b", "x"]
    assert live_sequence(["a", "b", "c"], ["x", "y"], 3) == ["c", "x", "y"]


def test_snapshot_tails_are_stored_and_extended_with_live_events(tmp_path):
    tails = {"u0": ["i1", "i2", "i3"], "u1": ["i4"]}
    ref, vecs = publish_random_snapshot(tmp_path, "t", users=5, items=50, dim=8, seed=3, model_version="m-1",
                                        tails=tails, sequences_until_ms=1_000)
    assert read_user_tails(ref) == {**{f"u{n}": [] for n in range(5)}, **tails}
    snapshot = load_served_snapshot(ref)
    assert snapshot.live_after_ms == 1_000 and snapshot.user_tails["u0"] == tails["u0"]
    recent = RecentItems(max_users=10, per_user=10)
    recent.add("u0", "i2", 900)  # before the snapshot: already in its tail, not live
    recent.add("u0", "i7", 1_500)
    rt = RealtimeUsers(recent)
    live, newest = rt.live(snapshot, "u0")
    assert (live, newest) == (["i7"], 1_500)
    sequence = rt.sequence(snapshot, "u0", live)
    assert sequence == ["i1", "i2", "i3", "i7"]
    vector, _ = snapshot.embed_sequence(sequence)
    want = normalize(TableEmbedder(str(vecs.table_path), model_version="m-1").embed_user_sequence(sequence))
    assert np.allclose(vector, want, atol=1e-6)
    assert rt.cached(snapshot, "u0", live, newest) is None
    rt.store(snapshot, "u0", live, newest, vector)
    assert rt.cached(snapshot, "u0", live, newest) is vector
    recent.add("u0", "i8", 1_600)  # the next event invalidates the cached vector
    live, newest = rt.live(snapshot, "u0")
    assert live == ["i7", "i8"] and rt.cached(snapshot, "u0", live, newest) is None


def test_embed_sequences_batches_what_embed_sequence_does_one_by_one(tmp_path):
    ref, _ = publish_random_snapshot(tmp_path, "t", users=3, items=40, dim=8, seed=2, model_version="m-1")
    snapshot = load_served_snapshot(ref)
    sequences = [["i1", "i2"], ["nope"], ["i3", "x", "i4", "i5"]]
    got = snapshot.embed_sequences(sequences)
    assert np.allclose(got[0], snapshot.embed_sequence(sequences[0])[0])
    assert isinstance(got[1], NotFoundError) and "none of the 1 item ids" in str(got[1])
    assert np.allclose(got[2], snapshot.embed_sequence(sequences[2])[0])

    class Batched(TableEmbedder):  # an embedder with a batched forward pass is called once for all
        calls = 0

        def embed_user_sequences(self, seqs):
            Batched.calls += 1
            return np.stack([self.embed_user_sequence(s) for s in seqs])

    batched = dataclasses.replace(snapshot, embedder=Batched(**ref.manifest["embedder"]["kwargs"]))
    both = batched.embed_sequences([sequences[0], sequences[2]])
    assert Batched.calls == 1 and np.allclose(both[0], got[0]) and np.allclose(both[1], got[2])


def test_refresh_ahead_caches_the_vector_a_request_would_compute(tmp_path):
    tails = {"u0": ["i1", "i2"], "u1": ["i3"]}
    ref, _ = publish_random_snapshot(tmp_path, "t", users=3, items=30, dim=8, seed=4, model_version="m-1",
                                     tails=tails, sequences_until_ms=1_000)
    snapshot = load_served_snapshot(ref)
    recent = RecentItems(max_users=10, per_user=10)
    rt = RealtimeUsers(recent)
    refresh = RefreshAhead(rt, lambda: snapshot, max_queued=2)
    recent.add("u0", "i5", 1_500)
    recent.add("u2", "i6", 500)  # before the snapshot: nothing live, nothing to compute
    recent.add("ghost", "i6", 1_500)  # not in the snapshot: answered from recent items, not cached
    for user in ("u0", "u2", "ghost"):
        refresh.note(user)
    assert refresh.stats()["refresh_dropped"] == 1  # the queue holds 2: the oldest (u0) was dropped
    refresh.start()
    try:
        deadline = time.monotonic() + 10
        while refresh.stats()["refresh_queued"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert refresh.refreshed == 0  # u2 and ghost: nothing the request path would cache
        refresh.note("u0")
        while refresh.refreshed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        live, newest = rt.live(snapshot, "u0")
        cached = rt.cached(snapshot, "u0", live, newest)
        assert refresh.refreshed == 1 and cached is not None
        assert np.allclose(cached, snapshot.embed_sequence(rt.sequence(snapshot, "u0", live))[0], atol=1e-6)
        assert rt.cached(snapshot, "u2", *rt.live(snapshot, "u2")) is None
        recent.add("u0", "i7", 1_600)  # a newer event: the cached vector no longer matches the key
        live, newest = rt.live(snapshot, "u0")
        assert rt.cached(snapshot, "u0", live, newest) is None
    finally:
        refresh.stop()
    assert not refresh.alive()
