"""Prediction metrics: the newest published snapshot and its index quality."""

from __future__ import annotations

from typing import Any

from precise.metrics import inc, set_gauge, version_number


def snapshot_published(task: str, version: str, manifest: dict[str, Any]) -> None:
    inc("precise_snapshots_published", 1, task=task)
    set_gauge("precise_snapshot_version", version_number(version), task=task)
    recall = (manifest.get("index") or {}).get("recall_at_k")
    if recall is not None:
        set_gauge("precise_snapshot_index_recall", recall, task=task)
