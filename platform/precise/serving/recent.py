"""Each user's most recent items, from the live `behavior-events` stream, in bounded memory.

U2I2I needs the user's recent items as seeds (paper section VI-B), `exclude_seen` needs what the
user has just consumed, and a user too new for the daily user snapshot can still be embedded in
real time from them. Memory is bounded three ways: at most `max_users` users and at most
`max_bytes` bytes (least recently active users evicted first), at most `per_user` distinct items
each.

The layout is compact because a replica holds millions of these: per user an array of event
times (8 bytes each) and a list of item ids, and each distinct item id string stored once,
shared by every user who has it. `bytes` is the memory this takes, counted as entries come and go
with per-object sizes measured on CPython (tests/test_serving_units.py compares it with
tracemalloc); it never undercounts by design, so `max_bytes` is a real ceiling.

`precise.events.feed.KafkaRecentFeed` fills a `RecentItems` from the topic in a daemon thread.
"""

from __future__ import annotations

import bisect
import sys
import threading
from array import array
from collections import OrderedDict

# Measured sizes (bytes, 64-bit CPython 3.11) of what an entry adds beyond its id strings, with
# the slack of container growth: a user (its slot in the ordered dict, the tuple, the array and
# list headers), an item of a user (8 for the time, 8 for the list slot, growth), a distinct item
# id (its slot in the shared table, its [id, count] pair).
USER_BYTES = 360
ENTRY_BYTES = 18
ITEM_BYTES = 130
MIN_BYTES = 1 << 16


class RecentItems:
    """user -> up to `per_user` distinct items ordered by event time; thread-safe."""

    def __init__(self, max_users: int, per_user: int, max_bytes: int = 1 << 30) -> None:
        if max_users < 1 or per_user < 1:
            raise ValueError("max_users and per_user must be >= 1")
        if max_bytes < MIN_BYTES:
            raise ValueError(f"max_bytes must be >= {MIN_BYTES}")
        self.max_users = max_users
        self.per_user = per_user
        self.max_bytes = max_bytes
        # user -> (event times, item ids), both oldest first
        self._users: OrderedDict[str, tuple[array, list[str]]] = OrderedDict()
        self._items: dict[str, list] = {}  # item id -> [the one shared id string, users holding it]
        self._lock = threading.Lock()
        self.bytes = 0
        self.evicted_users = 0

    def add(self, user_id: str, item_id: str, ts: int) -> None:
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None:
                entry = self._users[user_id] = (array("q"), [])
                self.bytes += USER_BYTES + sys.getsizeof(user_id)
            else:
                self._users.move_to_end(user_id)
            times, items = entry
            try:
                n = items.index(item_id)
            except ValueError:
                item_id = self._hold(item_id)
                self.bytes += ENTRY_BYTES
            else:
                if times[n] >= ts:
                    return  # an older event for an item we already have later
                item_id = items[n]
                del times[n], items[n]
            # Events of one user arrive in partition order, which is event-time order only
            # approximately (producers may be late): keep the items sorted by time.
            at = bisect.bisect_right(times, ts)
            times.insert(at, ts)
            items.insert(at, item_id)
            if len(items) > self.per_user:
                del times[0]
                self._release(items.pop(0))
                self.bytes -= ENTRY_BYTES
            while (len(self._users) > self.max_users or self.bytes > self.max_bytes) and len(self._users) > 1:
                self._evict_least_recent()

    def get(self, user_id: str, limit: int | None = None) -> list[str]:
        """The user's recent items, most recent first."""
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None:
                return []
            newest_first = entry[1][::-1]
        return newest_first[:limit] if limit else newest_first

    def since(self, user_id: str, after_ts: int) -> tuple[list[str], int]:
        """(the user's items with an event time after `after_ts`, oldest first; the newest event
        time, 0 if none): what a real-time vector adds to the snapshot's sequence tail."""
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None:
                return [], 0
            times, items = entry
            at = bisect.bisect_right(times, after_ts)
            return items[at:], (times[-1] if at < len(times) else 0)

    def __len__(self) -> int:
        return len(self._users)

    def _hold(self, item_id: str) -> str:
        """The shared string of `item_id`, counted once more."""
        held = self._items.get(item_id)
        if held is None:
            held = self._items[item_id] = [item_id, 0]
            self.bytes += ITEM_BYTES + sys.getsizeof(item_id)
        held[1] += 1
        return held[0]

    def _release(self, item_id: str) -> None:
        held = self._items[item_id]
        held[1] -= 1
        if held[1] == 0:
            del self._items[item_id]
            self.bytes -= ITEM_BYTES + sys.getsizeof(item_id)

    def _evict_least_recent(self) -> None:
        user_id, (_, items) = self._users.popitem(last=False)
        for item_id in items:
            self._release(item_id)
        self.bytes -= USER_BYTES + sys.getsizeof(user_id) + ENTRY_BYTES * len(items)
        self.evicted_users += 1
