"""Hot swap: follow a task's served version (its PIN, else LATEST) and replace the served snapshot
by reference.

A daemon thread polls the pointers; when they name another version, the whole snapshot is loaded
and checked off to the side while requests keep using the current one, then one attribute
assignment (atomic in Python) makes it current. Requests that already hold the old reference
finish on it. A snapshot that fails to load (for any reason: a damaged file, an unexpected
manifest, a model version that cannot be loaded) is reported (`last_error`, a metric) and not
retried; the replica serves the newest snapshot below it that loads, so a replica that starts
next to one bad snapshot serves the one before instead of nothing, and never crash-loops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from precise.serving.state import ServedSnapshot, load_served_snapshot
from precise.store.snapshots import SnapshotStore

log = logging.getLogger(__name__)


class SnapshotWatcher:
    def __init__(self, store: SnapshotStore, poll_interval_s: float,
                 allowed_prefixes: list[str] | None = None,
                 on_swap: Callable[[ServedSnapshot], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.store = store
        # observers (the replica's metrics): called after a swap / a refused snapshot; their
        # errors are logged, never allowed to stop the watcher
        self.on_swap = on_swap
        self.on_refused = on_refused
        self.poll_interval_s = poll_interval_s
        self.allowed_prefixes = allowed_prefixes
        self.current: ServedSnapshot | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self._failed: dict[str, str] = {}  # version -> why it was not served
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"snapshot-watcher-{store.task}", daemon=True)

    def start(self) -> SnapshotWatcher:
        self.poll_once()  # serve the existing LATEST from the first request on
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def poll_once(self) -> bool:
        """Serve the target version (PIN, else LATEST), or the newest loadable one below it; True
        if the served snapshot changed."""
        target = self.store.served_version()
        current = self.current
        if target is None or (current is not None and current.version == target):
            return False
        pinned = self.store.pinned_version() is not None
        # Without a pin versions only move forward; a pin may roll back.
        floor = current.version if current is not None and not pinned else ""
        for version in [v for v in reversed(self.store.versions()) if floor < v <= target]:
            if version in self._failed:
                continue
            snapshot = self._load(version)
            if snapshot is not None:
                self._swap(snapshot)
                return True
        return False

    def _load(self, version: str) -> ServedSnapshot | None:
        started = time.perf_counter()
        try:
            # an item delta over what is served now is applied to it: only the delta is read
            snapshot = load_served_snapshot(self.store.get(version), self.allowed_prefixes, self.current)
        except Exception as exc:  # noqa: BLE001 - any failure refuses this snapshot, never the replica
            self._failed[version] = f"{type(exc).__name__}: {exc}"
            self.last_error = f"snapshot {self.store.task}/{version} not served: {self._failed[version]}"
            log.error(self.last_error)
            self._notify(self.on_refused, self.store.task)
            return None
        log.info("loaded snapshot %s/%s (model %s) in %.2f s", snapshot.task, snapshot.version,
                 snapshot.model_version, time.perf_counter() - started)
        return snapshot

    def _swap(self, snapshot: ServedSnapshot) -> None:
        self.current = snapshot  # the swap: one reference assignment
        self.swaps += 1
        if snapshot.version == self.store.served_version():
            self.last_error = None
        self._notify(self.on_swap, snapshot)

    @staticmethod
    def _notify(observer: Callable[[Any], None] | None, value: Any) -> None:
        if observer is None:
            return
        try:
            observer(value)
        except Exception:  # noqa: BLE001 - an observer must not break serving
            log.exception("snapshot watcher observer failed")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the watcher must survive anything and say why
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("snapshot watcher error")

    def describe(self) -> dict[str, Any]:
        current = self.current
        base: dict[str, Any] = current.describe() if current else {
            "task": self.store.task, "snapshot_version": None, "model_version": None}
        return {**base, "swaps": self.swaps, "last_error": self.last_error}
