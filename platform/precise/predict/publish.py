"""Publish an embedding snapshot of one registered model (the pipeline's last step per cycle)."""

from __future__ import annotations

from typing import Any

from precise.config import EmbedderConfig, PreciseConfig
from precise.predict.embedder import REGISTRY_EMBEDDER
from precise.store.registry import ModelVersion


def registry_embedder_config(config: PreciseConfig, model: ModelVersion) -> EmbedderConfig:
    """The embedder of exactly `model` in this config's registry."""
    return EmbedderConfig(import_path=REGISTRY_EMBEDDER,
                          kwargs={"root": config.storage.resolved_root(), "kind": model.kind, "task": model.task,
                                  "version": model.version})


def publish_model(config: PreciseConfig, model: ModelVersion) -> dict[str, Any]:
    """Embed every item and user with `model` (users from its own sequence family) and publish."""
    from precise.predict.job import run_predict

    cfg = config.model_copy(deep=True)
    cfg.predict.embedder = registry_embedder_config(config, model)
    return run_predict(cfg).summary()


def publish_items(config: PreciseConfig) -> dict[str, Any] | None:
    """An item cycle (precise.predict.delta): embed only the catalogue's new and changed items,
    with the model of the task's LATEST snapshot, and publish them (and the deletions) as an item
    delta over its full snapshot; None when there is no snapshot yet (the first full cycle
    publishes one)."""
    from precise.predict.delta import run_item_cycle

    return run_item_cycle(config)
