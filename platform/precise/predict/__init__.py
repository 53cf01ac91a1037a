"""predict stage: batch inference of user and item embeddings into versioned snapshots."""

from precise.predict.embedder import Embedder, EmbedderError, load_embedder
from precise.predict.snapshot import SnapshotError, SnapshotRef, SnapshotStore

__all__ = ["Embedder", "EmbedderError", "SnapshotError", "SnapshotRef", "SnapshotStore", "load_embedder"]
