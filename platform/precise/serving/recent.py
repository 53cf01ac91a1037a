"""Each user's most recent items, from the live `behavior-events` stream, in bounded memory.

U2I2I needs the user's recent items as seeds (paper section VI-B), `exclude_seen` needs what the
user has just consumed, and a user too new for the daily user snapshot can still be embedded in
real time from them. Memory is bounded twice: at most `max_users` users (least recently active
evicted first) and at most `per_user` distinct items each.

`precise.events.feed.KafkaRecentFeed` fills a `RecentItems` from the topic in a daemon thread.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict


class RecentItems:
    """user -> up to `per_user` distinct items ordered by event time; thread-safe."""

    def __init__(self, max_users: int, per_user: int) -> None:
        if max_users < 1 or per_user < 1:
            raise ValueError("max_users and per_user must be >= 1")
        self.max_users = max_users
        self.per_user = per_user
        self._users: OrderedDict[str, list[tuple[int, str]]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_users = 0

    def add(self, user_id: str, item_id: str, ts: int) -> None:
        with self._lock:
            items = self._users.get(user_id)
            if items is None:
                items = self._users[user_id] = []
                if len(self._users) > self.max_users:
                    self._users.popitem(last=False)
                    self.evicted_users += 1
            else:
                self._users.move_to_end(user_id)
            for n, (old_ts, old_item) in enumerate(items):
                if old_item == item_id:
                    if old_ts >= ts:
                        return  # an older event for an item we already have later
                    del items[n]
                    break
            # Events of one user arrive in partition order, which is event-time order only
            # approximately (producers may be late): keep the list sorted by ts.
            bisect.insort(items, (ts, item_id))
            if len(items) > self.per_user:
                del items[: len(items) - self.per_user]

    def get(self, user_id: str, limit: int | None = None) -> list[str]:
        """The user's recent items, most recent first."""
        with self._lock:
            items = self._users.get(user_id)
            if not items:
                return []
            newest_first = [item for _, item in reversed(items)]
        return newest_first[:limit] if limit else newest_first

    def __len__(self) -> int:
        return len(self._users)
