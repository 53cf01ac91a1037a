"""Serving metrics: requests by route and status with their latency, and the served versions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from precise.metrics import inc, observe, set_gauge, version_number

OTHER = "other"  # unknown paths share one tag value: a scanner must not create a series per URL


class ServeMetrics:
    """One per replica process; `routes` are the app's paths (the only `endpoint` tag values),
    `task` the snapshot task the app serves (`serve.task`)."""

    def __init__(self, routes: Iterable[str], task: str) -> None:
        self.routes = frozenset(routes)
        self.task = task

    def endpoint(self, path: str) -> str:
        return path if path in self.routes else OTHER

    def request(self, path: str, status: int, seconds: float) -> None:
        tags = {"task": self.task, "endpoint": self.endpoint(path), "status": status}
        inc("precise_serve_requests", 1, **tags)
        observe("precise_serve_request_latency_s", seconds, **tags)

    def swapped(self, snapshot: Any) -> None:
        """A replica now serves `snapshot` (a ServedSnapshot)."""
        inc("precise_serve_snapshot_swaps", 1, task=snapshot.task)
        set_gauge("precise_serve_snapshot_version", version_number(snapshot.version), task=snapshot.task)
        model = str(snapshot.model_version or "")
        kind = model.split("/", 1)[0] if "/" in model else "external"
        set_gauge("precise_serve_model_version", version_number(model), task=snapshot.task, model=kind)

    def refused(self, task: str) -> None:
        inc("precise_serve_snapshot_failures", 1, task=task)
