"""What a recall replica serves: one immutable snapshot, loaded whole, swapped by reference.

`ServedSnapshot` bundles everything an answer depends on: user vectors, item vectors, the FAISS
index and the embedder of the model version that produced them. A request takes one reference to
it at the start and uses nothing else, so it can never combine a user vector of one version with
an index of another, and it finishes on that version even if a new one is swapped in meanwhile.

An item delta (an item cycle's snapshot) is served on top of its base without rebuilding the
index: the base's index stays as it is, the delta's vectors go into a small exact index beside it
(FAISS ids after the base's), and the base rows of changed or deleted items are masked out of
every base search with an ID selector. A search asks both and merges by score. The delta's
embedder is its base's (the same model version, checked), so nothing is reloaded.
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
    base_ref,
    read_index,
    read_item_delta,
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
    # an item delta: the full snapshot it is over, the exact index of its own items (FAISS ids from
    # base.index.ntotal on) and the selector that masks the base rows it replaces or deletes
    base: ServedSnapshot | None = field(default=None, repr=False)
    delta_index: faiss.Index | None = field(default=None, repr=False)
    masked: tuple[Any, ...] = field(default=(), repr=False)  # (IDSelectorNot, the batch it wraps)

    @property
    def num_items(self) -> int:
        """Items this snapshot serves (a delta's rows of replaced base items do not count)."""
        return len(self.item_row)

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

    def embed_sequences(self, sequences: list[list[str]]) -> list[np.ndarray | NotFoundError]:
        """`embed_sequence` of each sequence (its vector, or the NotFoundError it raises), with one
        model call for all of them when the embedder has `embed_user_sequences` (a batch)."""
        known = [[i for i in seq if i in self.item_row] for seq in sequences]
        batched = getattr(self.embedder, "embed_user_sequences", None)
        if batched is not None and all(known):
            try:
                return list(normalize(np.asarray(batched(known), dtype=np.float32)))
            except KeyError:
                pass  # some sequence the model cannot embed: each on its own says which
        out: list[np.ndarray | NotFoundError] = []
        for seq in sequences:
            try:
                out.append(self.embed_sequence(seq)[0])
            except NotFoundError as exc:
                out.append(exc)
        return out

    def embed_text(self, text: str, item_id: str | None = None) -> np.ndarray:
        """A normalised item vector from text alone (the cold-start path of the model)."""
        try:
            vector = self.embedder.embed_items([item_id or ""], [text])[0]
        except KeyError as exc:
            raise NotFoundError(f"cannot embed this text: {exc.args[0] if exc.args else exc}") from None
        return normalize(vector)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], ids [q, k]) over the served items, best first; ids are rows of
        `item_ids`, -1 pads."""
        if self.delta_index is None:
            return search(self.index, queries, k, self.index_info)
        scores, ids = search(self.index, queries, k, self.index_info, self.masked[0] if self.masked else None)
        if self.delta_index.ntotal:
            extra_scores, extra_ids = search(self.delta_index, queries, k)
            scores = np.concatenate([scores, extra_scores], axis=1)
            ids = np.concatenate([ids, np.where(extra_ids < 0, -1, extra_ids + self.index.ntotal)], axis=1)
        scores = np.where(ids < 0, -np.inf, scores)  # FAISS padding sorts last
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {**self.versions(), "created_at": m.get("created_at"), "num_items": self.num_items,
                "num_users": len(self.user_row), "dim": self.dim, "index": m.get("index"),
                "base_version": m.get("base"), "item_delta": m.get("item_delta"), "loaded_at": self.loaded_at}


def load_served_snapshot(ref: SnapshotRef, allowed_prefixes: list[str] | None = None,
                         loaded: ServedSnapshot | None = None) -> ServedSnapshot:
    """Read a whole snapshot and check it against its manifest; raise SnapshotError if anything is
    off. An item delta is applied to its base: `loaded` (what the replica serves now) when that is
    the base or another delta over it, so only the delta is read; else the base from disk."""
    if ref.manifest.get("base") is not None:
        base = None if loaded is None else (loaded.base or loaded)
        if base is None or base.version != ref.manifest["base"]:
            base = load_served_snapshot(base_ref(ref), allowed_prefixes)
        return apply_item_delta(base, ref)
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


def apply_item_delta(base: ServedSnapshot, ref: SnapshotRef) -> ServedSnapshot:
    """The item delta `ref` served on top of the full snapshot `base` (no index rebuild)."""
    m = ref.manifest
    delta = read_item_delta(ref)
    if delta is None or base.base is not None or m["base"] != base.version:
        raise SnapshotError(f"snapshot {ref.task}/{ref.version} is not an item delta over {base.version}")
    if m["model_version"] != base.model_version or m.get("embedder") != base.manifest.get("embedder"):
        raise SnapshotError(f"item delta {ref.task}/{ref.version} is of model {m['model_version']}, its base "
                            f"{base.version} of {base.model_version}: a snapshot never mixes model versions")
    if len(delta.item_ids) and delta.vectors.shape[1] != base.dim:
        raise SnapshotError(f"item delta {ref.task}/{ref.version}: dim {delta.vectors.shape[1]}, base {base.dim}")
    gone = [base.item_row[i] for i in {*delta.deleted, *delta.item_ids} if i in base.item_row]
    n_base, masked_rows = len(base.item_ids), set(gone)
    item_row = {i: r for i, r in base.item_row.items() if r not in masked_rows}
    item_row.update({i: n_base + n for n, i in enumerate(delta.item_ids)})
    if len(item_row) != m["num_items"]:
        raise SnapshotError(f"item delta {ref.task}/{ref.version} serves {len(item_row)} items, its manifest "
                            f"says {m['num_items']}")
    index = faiss.IndexFlatIP(base.dim)  # the delta's own items: few, searched exactly
    if len(delta.item_ids):
        index.add(np.ascontiguousarray(delta.vectors, dtype=np.float32))
    masked: tuple[Any, ...] = ()
    if gone:
        rows = np.asarray(sorted(gone), dtype=np.int64)
        batch = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))
        masked = (faiss.IDSelectorNot(batch), batch)
    return ServedSnapshot(
        task=ref.task, version=ref.version, model_version=base.model_version, manifest=m,
        item_ids=base.item_ids + delta.item_ids, item_vectors=np.concatenate([base.item_vectors, delta.vectors]),
        user_vectors=base.user_vectors, index=base.index, index_info=base.index_info, embedder=base.embedder,
        item_row=item_row, user_row=base.user_row, user_tails=base.user_tails, base=base, delta_index=index,
        masked=masked,
    )
