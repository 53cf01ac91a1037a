"""predict stage: batch inference of user and item embeddings into versioned snapshots (precise.store)."""

from precise.predict.embedder import Embedder, EmbedderError, load_embedder

__all__ = ["Embedder", "EmbedderError", "load_embedder"]
