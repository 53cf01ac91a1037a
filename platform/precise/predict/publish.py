"""Publish an embedding snapshot of the newest trained model (the pipeline's last step per cycle)."""

from __future__ import annotations

from typing import Any

from precise.config import EmbedderConfig, PreciseConfig

REGISTRY_EMBEDDER = "precise.predict.model_embedder:RegistryEmbedder"


def registry_embedder_config(config: PreciseConfig, kind: str = "targeted") -> EmbedderConfig:
    """The embedder of the LATEST `kind` model of this config's registry (targeted: its task)."""
    return EmbedderConfig(import_path=REGISTRY_EMBEDDER,
                          kwargs={"root": config.storage.resolved_root(), "kind": kind,
                                  "task": config.training.target if kind == "targeted" else None})


def publish_from_registry(config: PreciseConfig, kind: str = "targeted") -> dict[str, Any]:
    """Embed every item and user with the newest `kind` model and publish a snapshot.

    A config that names an embedder explicitly keeps it; the default (precomputed vectors) is
    replaced by the registry's model, which is what a training cycle has just produced."""
    from precise.predict.job import run_predict

    cfg = config.model_copy(deep=True)
    if cfg.predict.embedder.import_path == EmbedderConfig().import_path:
        cfg.predict.embedder = registry_embedder_config(config, kind)
    elif cfg.predict.embedder.import_path == REGISTRY_EMBEDDER:
        cfg.predict.embedder.kwargs.setdefault("root", config.storage.resolved_root())
    return run_predict(cfg).summary()
