"""Real-time user vectors: the snapshot's sequence tail of a user plus their live events since.

The vector is computed by the snapshot's own embedder (the model version that made the index),
so it never mixes versions, and it is cached per user until the user's next event (or the next
snapshot): a user who does not act costs one dict lookup. A user who does act has their vector
recomputed in the background as their event arrives (`RefreshAhead`), so their next request
usually finds it cached; when it does not (the refresh queue was full, or the request came first),
the request pays one model call. Pure Python over a `ServedSnapshot` and a `RecentItems`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from precise.serving.recent import RecentItems
from precise.serving.state import ServedSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveVector:
    vector: np.ndarray | None  # None: no live events, the stored vector stands
    live_events: int  # live items the vector saw (beyond the snapshot's sequence)
    sequence: list[str]  # what was embedded, oldest first (empty when vector is None)


def live_sequence(tail: list[str], live: list[str], max_len: int) -> list[str]:
    """The tail extended by the live items (an item seen again moves to the end), last `max_len`."""
    fresh = set(live)
    return ([i for i in tail if i not in fresh] + list(live))[-max_len:]


class RealtimeUsers:
    """user -> cached real-time vector, keyed by (snapshot, newest live event); LRU-bounded."""

    def __init__(self, recent: RecentItems, max_cached: int = 100_000) -> None:
        self.recent = recent
        self.max_cached = max_cached
        self._cache: OrderedDict[str, tuple[str, int, int, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def live(self, snapshot: ServedSnapshot, user_id: str) -> tuple[list[str], int]:
        return self.recent.since(user_id, snapshot.live_after_ms)

    def known_live(self, snapshot: ServedSnapshot, user_id: str) -> tuple[list[str], int]:
        """`live`, keeping only the items the snapshot's model knows (it embeds only those)."""
        live, newest = self.live(snapshot, user_id)
        return [i for i in live if i in snapshot.item_row], newest

    def cached(self, snapshot: ServedSnapshot, user_id: str, live: list[str], newest: int) -> np.ndarray | None:
        with self._lock:
            entry = self._cache.get(user_id)
            if entry is not None and entry[:3] == (snapshot.version, newest, len(live)):
                self._cache.move_to_end(user_id)
                self.hits += 1
                return entry[3]
            self.misses += 1
            return None

    def peek(self, snapshot: ServedSnapshot, user_id: str, live: list[str], newest: int) -> bool:
        """Whether the cache holds this vector (not counted as a hit or a miss)."""
        with self._lock:
            entry = self._cache.get(user_id)
            return entry is not None and entry[:3] == (snapshot.version, newest, len(live))

    def store(self, snapshot: ServedSnapshot, user_id: str, live: list[str], newest: int,
              vector: np.ndarray) -> None:
        with self._lock:
            self._cache[user_id] = (snapshot.version, newest, len(live), vector)
            self._cache.move_to_end(user_id)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)

    def sequence(self, snapshot: ServedSnapshot, user_id: str, live: list[str]) -> list[str]:
        return live_sequence(snapshot.user_tails.get(user_id, []), live, snapshot.max_len)


class RefreshAhead:
    """Recomputes the real-time vectors of users who just acted, in a background thread, so that
    their next U2I finds the vector cached instead of paying a model call on the request path.

    Fed by the recent-items stream (`note`): a bounded queue of users, oldest dropped when full
    (a dropped user's vector is computed at their next request, as without refresh-ahead). It only
    ever fills the cache of `RealtimeUsers` under the same key a request checks (snapshot version,
    newest live event, live count), so an answer is never staler than the lazy path would give.
    """

    def __init__(self, users: RealtimeUsers, current: Callable[[], ServedSnapshot | None],
                 max_queued: int = 10_000, batch_size: int = 32) -> None:
        self.users = users
        self.current = current
        self.max_queued = max_queued
        self.batch_size = batch_size
        self._queue: OrderedDict[str, None] = OrderedDict()
        self._wake = threading.Condition()
        self._stop = False
        self.refreshed = self.dropped = self.failed = 0
        self.thread = threading.Thread(target=self._run, name="precise-realtime-refresh", daemon=True)

    def start(self) -> RefreshAhead:
        self.thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self.thread.join(timeout)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def note(self, user_id: str) -> None:
        """`user_id` has a new live event (called by the stream consumer)."""
        with self._wake:
            self._queue[user_id] = None
            self._queue.move_to_end(user_id)
            while len(self._queue) > self.max_queued:
                self._queue.popitem(last=False)
                self.dropped += 1
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        return {"refreshed_ahead": self.refreshed, "refresh_dropped": self.dropped,
                "refresh_failed": self.failed, "refresh_queued": len(self._queue),
                "cache_hits": self.users.hits, "cache_misses": self.users.misses}

    def _take(self) -> list[str]:
        with self._wake:
            while not self._queue and not self._stop:
                self._wake.wait()
            batch = []
            while self._queue and len(batch) < self.batch_size:
                batch.append(self._queue.popitem(last=False)[0])
            return batch

    def _run(self) -> None:
        while not self._stop:
            batch = self._take()
            snapshot = self.current()
            if snapshot is None or not batch:
                continue
            try:
                self.refresh(snapshot, batch)
            except Exception:  # noqa: BLE001 - the request path computes what this could not
                self.failed += len(batch)
                log.exception("refreshing real-time vectors ahead failed; requests compute them")

    def refresh(self, snapshot: ServedSnapshot, user_ids: list[str]) -> int:
        """Compute and cache the vectors of those of `user_ids` the request path would compute."""
        keys, sequences = [], []
        for user_id in user_ids:
            if snapshot.user_vector(user_id) is None:
                continue  # a user newer than the snapshot: answered from recent items, not cached
            live, newest = self.users.known_live(snapshot, user_id)
            if not live or self.users.peek(snapshot, user_id, live, newest):
                continue
            keys.append((user_id, live, newest))
            sequences.append(self.users.sequence(snapshot, user_id, live))
        if not sequences:
            return 0
        done = 0
        for (user_id, live, newest), vector in zip(keys, snapshot.embed_sequences(sequences), strict=True):
            if isinstance(vector, np.ndarray) and np.isfinite(vector).all():
                self.users.store(snapshot, user_id, live, newest, vector)
                done += 1
        self.refreshed += done
        return done
