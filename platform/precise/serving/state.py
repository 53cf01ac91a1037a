"""What a recall replica serves: one immutable snapshot, loaded whole, swapped by reference.

`ServedSnapshot` bundles everything an answer depends on: user vectors, item vectors, the FAISS
index and the embedder of the model version that produced them. A request takes one reference to
it at the start and uses nothing else, so it can never combine a user vector of one version with
an index of another, and it finishes on that version even if a new one is swapped in meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from precise.predict.embedder import Embedder, load_embedder
from precise.predict.index import search
from precise.store.snapshots import (
    IndexInfo,
    SnapshotError,
    SnapshotRef,
    read_index,
    read_items,
    read_user_tails,
    read_users,
)
from precise.vectors import normalize


class NotFoundError(LookupError):
    """An id the snapshot does not know (HTTP 404)."""


@dataclass(frozen=True, eq=False)
class ServedSnapshot:
    task: str
    version: str
    model_version: str
    manifest: dict[str, Any]
    item_ids: list[str]
    item_vectors: np.ndarray
    user_vectors: np.ndarray
    index: faiss.Index
    index_info: IndexInfo
    embedder: Embedder
    item_row: dict[str, int] = field(repr=False)
    user_row: dict[str, int] = field(repr=False)
    # user -> sequence tail (oldest first) the stored vector came from; {} for snapshots without
    user_tails: dict[str, list[str]] = field(default_factory=dict, repr=False)
    loaded_at: float = field(default_factory=time.time)

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def versions(self) -> dict[str, str]:
        return {"task": self.task, "snapshot_version": self.version, "model_version": self.model_version}

    def user_vector(self, user_id: str) -> np.ndarray | None:
        row = self.user_row.get(user_id)
        return None if row is None else self.user_vectors[row]

    @property
    def live_after_ms(self) -> int:
        """Events after this event time (ms) are not in the snapshot's sequences: they are live."""
        m = self.manifest
        return int(m["sequences_until_ms"]) if m.get("sequences_until_ms") is not None else int(m["created_ts"] * 1000)

    @property
    def max_len(self) -> int:
        """The model's sequence length (its sequence rules); the longest sequence worth embedding."""
        return int((self.manifest.get("sequence_rules") or {}).get("max_len") or 50)

    def item_vector(self, item_id: str) -> np.ndarray | None:
        row = self.item_row.get(item_id)
        return None if row is None else self.item_vectors[row]

    def embed_sequence(self, item_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """A normalised user vector from a sequence (oldest first) with this snapshot's model;
        also the ids that were ignored because the snapshot does not know them."""
        known = [i for i in item_ids if i in self.item_row]
        ignored = [i for i in item_ids if i not in self.item_row]
        if not known:
            raise NotFoundError(f"none of the {len(item_ids)} item ids is in snapshot {self.version}")
        try:
            vector = self.embedder.embed_user_sequence(known)
        except KeyError as exc:  # e.g. items embedded from text only, unknown to the model's id table
            raise NotFoundError(f"model {self.model_version} cannot embed this sequence: "
                                f"{exc.args[0] if exc.args else exc}") from None
        return normalize(vector), ignored

    def embed_text(self, text: str, item_id: str | None = None) -> np.ndarray:
        """A normalised item vector from text alone (the cold-start path of the model)."""
        try:
            vector = self.embedder.embed_items([item_id or ""], [text])[0]
        except KeyError as exc:
            raise NotFoundError(f"cannot embed this text: {exc.args[0] if exc.args else exc}") from None
        return normalize(vector)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search(self.index, queries, k, self.index_info)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {**self.versions(), "created_at": m.get("created_at"), "num_items": len(self.item_ids),
                "num_users": len(self.user_row), "dim": self.dim, "index": m.get("index"),
                "loaded_at": self.loaded_at}


def load_served_snapshot(ref: SnapshotRef, allowed_prefixes: list[str] | None = None) -> ServedSnapshot:
    """Read a whole snapshot and check it against its manifest; raise SnapshotError if anything is off."""
    m = ref.manifest
    item_ids, item_vectors = read_items(ref)
    user_ids, user_vectors = read_users(ref)
    index, info = read_index(ref)
    dim = int(m["dim"])
    problems = []
    if len(item_ids) != m["num_items"] or index.ntotal != len(item_ids):
        problems.append(f"{len(item_ids)} items and {index.ntotal} indexed, manifest says {m['num_items']}")
    if len(user_ids) != m["num_users"]:
        problems.append(f"{len(user_ids)} users, manifest says {m['num_users']}")
    if item_vectors.shape[1] != dim or index.d != dim or (len(user_ids) and user_vectors.shape[1] != dim):
        problems.append(f"vector or index dimension differs from the manifest's {dim}")
    if len(set(user_ids)) != len(user_ids):
        problems.append("duplicate user ids")
    if problems:
        raise SnapshotError(f"snapshot {ref.task}/{ref.version} is inconsistent: {'; '.join(problems)}")
    spec = m.get("embedder") or {}
    try:
        embedder = load_embedder(spec["import_path"], spec.get("kwargs"), allowed_prefixes)
    except (KeyError, ValueError, OSError) as exc:
        raise SnapshotError(f"snapshot {ref.task}/{ref.version}: cannot load its embedder: {exc}") from None
    if embedder.model_version != m["model_version"]:
        # Real-time vectors from another model version would be compared against this index.
        raise SnapshotError(f"snapshot {ref.task}/{ref.version} was made by model {m['model_version']} but its "
                            f"embedder loads model {embedder.model_version}")
    return ServedSnapshot(
        task=ref.task, version=ref.version, model_version=m["model_version"], manifest=m,
        item_ids=item_ids, item_vectors=item_vectors, user_vectors=user_vectors, index=index,
        index_info=info, embedder=embedder, item_row={i: n for n, i in enumerate(item_ids)},
        user_row={u: n for n, u in enumerate(user_ids)}, user_tails=read_user_tails(ref),
    )
