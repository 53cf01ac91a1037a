"""Training metrics: per epoch from the Ray Train workers, the registered version from the driver."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from precise.metrics import inc, set_gauge, version_number


def epoch_finished(model: str, task: str, rank: int, samples: int, metrics: Mapping[str, Any]) -> None:
    """Every worker counts its own samples; rank 0 also sets the epoch's loss, rate and validation.
    `task`: the sequence family trained on (the all-scene name for the universal model)."""
    tags = {"model": model, "task": task}
    inc("precise_train_samples", samples, **tags)
    if rank != 0:
        return
    inc("precise_train_epochs", 1, **tags)
    set_gauge("precise_train_loss", metrics["loss"], **tags)
    set_gauge("precise_train_samples_per_s", metrics["samples_per_s"], **tags)
    if "val_ndcg_at_10" in metrics:
        set_gauge("precise_train_val_ndcg_at_10", metrics["val_ndcg_at_10"], **tags)


def model_registered(model: str, task: str, version: str, metrics: Mapping[str, Any]) -> None:
    """The driver's view once a job has registered `version`: held for as long as the driver runs
    (the workers' gauges end with them), so the last loss stays visible between cycles."""
    tags = {"model": model, "task": task}
    set_gauge("precise_model_version", version_number(version), **tags)
    set_gauge("precise_train_loss", metrics["loss"], **tags)
    set_gauge("precise_train_samples_per_s", metrics["samples_per_s"], **tags)
    if "val_ndcg_at_10" in metrics:
        set_gauge("precise_train_val_ndcg_at_10", metrics["val_ndcg_at_10"], **tags)
