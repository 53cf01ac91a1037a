"""A live view of the behaviour stream for serving: each replica follows `behavior-events` itself.

`KafkaRecentFeed` reads every partition (no consumer group: each serving replica keeps its own
complete view) from `backfill_per_partition` records before the end, forever, in a daemon thread,
and adds each event to a sink (`precise.serving.recent.RecentItems`). Ids longer than the event
contract allows (`MAX_ID_CHARS`) are counted as invalid and never stored: the stream is not
validated before it reaches serving, and one producer's bug must not fill a replica's memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from precise.events.schema import MAX_ID_CHARS

log = logging.getLogger(__name__)


class RecentSink(Protocol):
    evicted_users: int
    bytes: int
    max_bytes: int

    def add(self, user_id: str, item_id: str, ts: int) -> None: ...

    def __len__(self) -> int: ...


def parse_recent_event(value: bytes) -> tuple[str, str, int, str]:
    """(user_id, item_id, ts, action) from a behaviour event's JSON; ValueError if it is not one."""
    try:
        event = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    user, item, ts, action = event.get("user_id"), event.get("item_id"), event.get("ts"), event.get("action", "")
    if not isinstance(user, str) or not user or not isinstance(item, str) or not item:
        raise ValueError("user_id and item_id must be non-empty strings")
    if len(user) > MAX_ID_CHARS or len(item) > MAX_ID_CHARS:
        raise ValueError(f"user_id and item_id must be at most {MAX_ID_CHARS} characters")
    if not isinstance(ts, int) or isinstance(ts, bool) or not -(1 << 63) <= ts < 1 << 63:
        raise ValueError("ts must be a 64-bit integer (epoch milliseconds)")
    return user, item, ts, action if isinstance(action, str) else ""


class KafkaRecentFeed:
    """Consumes `topic` from `backfill_per_partition` records before each partition's end, forever."""

    def __init__(self, recent: RecentSink, bootstrap_servers: str, topic: str,
                 actions: list[str] | None = None, backfill_per_partition: int = 100_000,
                 client_options: dict[str, Any] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.recent = recent
        self.on_event = on_event  # called with the user id after each event is added
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.actions = set(actions) if actions else None
        self.backfill = backfill_per_partition
        self.client_options = client_options or {}
        self.consumed = 0
        self.invalid = 0
        self.filtered = 0
        self.last_error: str | None = None
        # partition -> next offset / end offset. Written by the feed thread, read by stats() in
        # request threads: every access holds the lock (iterating a dict while another thread
        # adds a partition raises "dictionary changed size during iteration").
        self._positions: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recent-items-{topic}", daemon=True)

    def start(self) -> KafkaRecentFeed:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            lag = sum(max(0, self._ends.get(p, 0) - pos) for p, pos in self._positions.items())
            partitions = len(self._positions)
        return {"topic": self.topic, "users": len(self.recent), "consumed": self.consumed,
                "invalid": self.invalid, "filtered": self.filtered, "lag": lag, "partitions": partitions,
                "evicted_users": self.recent.evicted_users, "bytes": self.recent.bytes,
                "max_bytes": self.recent.max_bytes, "last_error": self.last_error}

    def _run(self) -> None:
        # Reconnect on any client error: a broker restart must not end recent-item tracking.
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception as exc:  # noqa: BLE001 - logged, reported in stats, retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("recent-items feed on %s failed, retrying: %s", self.topic, self.last_error)
                self._stop.wait(2.0)

    def _consume(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        # Metadata at most 5 s old (kafka-python's default is 5 minutes): partitions added to the
        # topic are found on the next refresh below, not minutes later.
        options = {"metadata_max_age_ms": 5000, **self.client_options}
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                 group_id=None, **options)
        try:
            assigned: set[int] = set()
            next_refresh = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_refresh:  # pick up new partitions (and a late topic)
                    partitions = consumer.partitions_for_topic(self.topic) or set()
                    if partitions - assigned:
                        self._assign(consumer, partitions, assigned, TopicPartition)
                    tps = [TopicPartition(self.topic, p) for p in assigned]
                    if tps:
                        ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
                        with self._lock:
                            self._ends = ends
                    next_refresh = time.monotonic() + 5.0
                if not assigned:
                    self._stop.wait(0.5)
                    continue
                for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                    for record in records:
                        self._ingest(record.value)
                    position = records[-1].offset + 1
                    with self._lock:
                        self._positions[tp.partition] = position
                        self._ends[tp.partition] = max(self._ends.get(tp.partition, 0), position)
        finally:
            consumer.close()

    def _assign(self, consumer: Any, partitions: set[int], assigned: set[int], tp_cls: type) -> None:
        new = [tp_cls(self.topic, p) for p in sorted(partitions - assigned)]
        old = sorted(assigned)
        assigned.update(partitions)
        consumer.assign([tp_cls(self.topic, p) for p in sorted(assigned)])
        for p in old:  # a new assignment may forget positions: continue where we were
            consumer.seek(tp_cls(self.topic, p), self._positions[p])
        starts = consumer.beginning_offsets(new)
        ends = consumer.end_offsets(new)
        for tp in new:
            start = max(starts[tp], ends[tp] - self.backfill)
            consumer.seek(tp, start)
            with self._lock:
                self._positions[tp.partition] = start
                self._ends[tp.partition] = ends[tp]

    def _ingest(self, value: bytes) -> None:
        try:
            user, item, ts, action = parse_recent_event(value)
        except ValueError:
            # The ingest pipeline dead-letters bad events; here they are only counted.
            self.invalid += 1
            return
        if self.actions is not None and action not in self.actions:
            self.filtered += 1
            return
        self.recent.add(user, item, ts)
        self.consumed += 1
        if self.on_event is not None:
            self.on_event(user)
