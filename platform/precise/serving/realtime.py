"""Real-time user vectors: the snapshot's sequence tail of a user plus their live events since.

The vector is computed by the snapshot's own embedder (the model version that made the index),
so it never mixes versions, and it is cached per user until the user's next event (or the next
snapshot): a user who does not act costs one dict lookup, a user who does costs one model call
for their first request after it. Pure Python over a `ServedSnapshot` and a `RecentItems`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from precise.serving.recent import RecentItems
from precise.serving.state import ServedSnapshot


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

    def cached(self, snapshot: ServedSnapshot, user_id: str, live: list[str], newest: int) -> np.ndarray | None:
        with self._lock:
            entry = self._cache.get(user_id)
            if entry is not None and entry[:3] == (snapshot.version, newest, len(live)):
                self._cache.move_to_end(user_id)
                self.hits += 1
                return entry[3]
            self.misses += 1
            return None

    def store(self, snapshot: ServedSnapshot, user_id: str, live: list[str], newest: int,
              vector: np.ndarray) -> None:
        with self._lock:
            self._cache[user_id] = (snapshot.version, newest, len(live), vector)
            self._cache.move_to_end(user_id)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)

    def sequence(self, snapshot: ServedSnapshot, user_id: str, live: list[str]) -> list[str]:
        return live_sequence(snapshot.user_tails.get(user_id, []), live, snapshot.max_len)
