"""What serving and batch prediction need from a trained model: the `Embedder` protocol.

A trained PRECISE model gives item embeddings (from the item id and the item's text: a new item
known only by its text still gets one, which is the cold-start path) and user embeddings (from
the user's item sequence). Everything downstream (the predict job, the snapshot, the Serve app)
talks to this protocol only, and builds the concrete class from an import path in config, so the
real model plugs in without touching them.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """A trained model as serving sees it. Vectors need not be normalised (the snapshot does it)."""

    model_version: str

    def embed_items(self, item_ids: list[str], texts: list[str] | None) -> np.ndarray:
        """[n, d] float32. `texts[i]` describes `item_ids[i]`; an id the model has never seen
        (or an empty id) is embedded from its text alone. Raises KeyError for an unknown id
        without text."""
        ...

    def embed_user_sequence(self, item_ids: list[str]) -> np.ndarray:
        """[d] float32 for a user whose items, oldest first, are `item_ids`. Raises KeyError
        when no item of the sequence is known to the model."""
        ...


# The trained model of the registry (precise.predict.model_embedder): snapshots pin its version.
REGISTRY_EMBEDDER = "precise.predict.model_embedder:RegistryEmbedder"


class EmbedderError(ValueError):
    """An embedder that cannot be imported or built; the message names the import path."""


def load_embedder(import_path: str, kwargs: dict[str, Any] | None = None,
                  allowed_prefixes: list[str] | None = None) -> Embedder:
    """Build `module:Class(**kwargs)`; with `allowed_prefixes`, only from those modules.

    The allow-list matters in serving, where the import path comes from a snapshot manifest on
    shared storage: whoever can write there must not be able to make replicas import anything.
    """
    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise EmbedderError(f"embedder import path {import_path!r} must look like 'package.module:Class'")
    if allowed_prefixes is not None and not any(module_name.startswith(p) for p in allowed_prefixes):
        raise EmbedderError(f"embedder module {module_name!r} is not under an allowed prefix {allowed_prefixes}")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EmbedderError(f"cannot import embedder {import_path!r}: {exc}") from None
    try:
        embedder = cls(**(kwargs or {}))
    except TypeError as exc:
        raise EmbedderError(f"cannot build embedder {import_path!r} with {sorted(kwargs or {})}: {exc}") from None
    if not isinstance(embedder, Embedder):
        raise EmbedderError(f"{import_path!r} does not implement the Embedder protocol")
    return embedder


def set_thread_counts(threads: int) -> None:
    """Pin torch and FAISS thread pools: on a small machine, every worker spinning up one thread per
    core multiplies into oversubscription and tail latency."""
    import faiss

    faiss.omp_set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # torch is optional for embedders that do not use it
        pass
