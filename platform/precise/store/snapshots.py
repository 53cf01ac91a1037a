"""Embedding snapshots (DESIGN section 4): one model version's user and item vectors plus the index.

    <root>/embeddings/<task>/<version>/
        manifest.json          what, from which model, when, how many, index type and its recall@k
        items.parquet          item_id, vector (row i = FAISS id i; L2-normalised)
        item_id_map.parquet    faiss_id, item_id (for readers that need only the index)
        index.faiss            the FAISS index over the item vectors
        users/*.parquet        user_id, vector (L2-normalised; one or more files)
    <root>/embeddings/<task>/<version>/   an item delta (an item cycle's snapshot, `base` in its manifest)
        manifest.json          as above, plus `base` (a full snapshot) and `item_delta` (counts)
        item_delta.parquet     item_id, vector, text_hash: items new or changed since the base
        deleted.parquet        item_id: items of the base that left the catalogue or changed
    <root>/embeddings/<task>/LATEST    the newest published version's name
    <root>/embeddings/<task>/PIN       optional: the version to serve instead of LATEST (a rollback)

A snapshot is written into a hidden staging folder, renamed into place under the next free version
number (rename is atomic and fails if a concurrent writer took the number), and only then LATEST is
replaced atomically (temp file, fsync, os.replace), forwards only: a reader that follows LATEST
sees a whole snapshot or the previous one, never a half-written one. Like the model registry, the
root is a local or mounted filesystem (NFS, EFS, a KubeRay PVC).

An item delta is a snapshot of its own (a version, LATEST moves to it) that stores only what an
item cycle changed relative to one full snapshot, its base: no users, no index. It has the base's
model version and embedder (`publish_item_delta` refuses anything else), and each delta is
cumulative over the base (never a chain), so a reader needs the base and one delta. The readers
here (`read_items`, `read_users`, `read_user_tails`) give a delta's effective content; serving adds
the delta to the base's index in memory (precise.serving.state). `prune` keeps every base a kept
delta needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precise.store.files import Files, local_root
from precise.vectors import normalize, vectors_from_arrow, vectors_to_arrow

FORMAT = 1
MANIFEST, LATEST, PIN, INDEX, USERS = "manifest.json", "LATEST", "PIN", "index.faiss", "users"
ITEMS, ITEM_ID_MAP = "items.parquet", "item_id_map.parquet"
ITEM_DELTA, DELETED = "item_delta.parquet", "deleted.parquet"
TAIL = "tail"  # the users' column of sequence tails
TEXT_HASH = "text_hash"  # the items' column of hashes of the text each was embedded from


def text_hash(text: str | None) -> str | None:
    """A stable digest of an item's text: an item cycle re-embeds an item only when it changes."""
    return None if text is None else hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass
class IndexInfo:
    """What the manifest records about an index."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    build_s: float = 0.0
    recall_k: int = 0
    recall_queries: int = 0
    recall_at_k: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


IndexBuilder = Callable[[np.ndarray, np.ndarray], tuple[faiss.Index, IndexInfo]]  # (items, queries) -> index


class SnapshotError(LookupError):
    """A snapshot that does not exist, is incomplete, or contradicts its manifest."""


@dataclass(frozen=True)
class SnapshotRef:
    task: str
    version: str
    path: Path
    manifest: dict[str, Any]


class SnapshotStore:
    """The snapshots of one task under `<root>/embeddings/<task>/`."""

    def __init__(self, root: str | Path | Files, task: str) -> None:
        if not task or "/" in task or task.startswith("."):
            raise SnapshotError(f"bad task name {task!r}")
        try:
            self.files = local_root(root)
        except ValueError as exc:
            raise SnapshotError(f"embedding snapshots: {exc}") from None
        self.task = task
        self.dir = self.files.local_path("embeddings", task)

    def versions(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and p.name.isdigit())

    def latest_version(self) -> str | None:
        pointer = self.dir / LATEST
        try:
            return pointer.read_text().strip() or None
        except FileNotFoundError:
            return None

    def get(self, version: str) -> SnapshotRef:
        path = self.dir / version
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise SnapshotError(f"no snapshot {self.task}/{version} under {self.dir}") from None
        except json.JSONDecodeError as exc:
            raise SnapshotError(f"snapshot {self.task}/{version}: manifest is not JSON: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise SnapshotError(f"snapshot {self.task}/{version}: format {manifest.get('format')}, expected {FORMAT}")
        return SnapshotRef(self.task, version, path, manifest)

    def latest(self) -> SnapshotRef | None:
        version = self.latest_version()
        return None if version is None else self.get(version)

    def pinned_version(self) -> str | None:
        try:
            return (self.dir / PIN).read_text().strip() or None
        except FileNotFoundError:
            return None

    def served_version(self) -> str | None:
        """What replicas should serve: the pinned version if there is one, else LATEST."""
        return self.pinned_version() or self.latest_version()

    def pin(self, version: str) -> SnapshotRef:
        """Serve `version` (an existing snapshot) instead of LATEST until `unpin`."""
        ref = self.get(version)
        self.files.write_bytes(str(self.dir / PIN), version.encode())
        return ref

    def unpin(self) -> bool:
        existed = (self.dir / PIN).is_file()
        (self.dir / PIN).unlink(missing_ok=True)
        return existed

    def _base_version(self, version: str) -> str | None:
        try:
            return self.get(version).manifest.get("base")
        except SnapshotError:
            return None

    def writer(self) -> SnapshotWriter:
        return SnapshotWriter(self)

    def publish_item_delta(self, base: SnapshotRef, ids: list[str], vectors: np.ndarray,
                           hashes: list[str | None], deleted: list[str], model_version: str,
                           extra: dict[str, Any] | None = None) -> SnapshotRef:
        """Publish an item delta over the full snapshot `base`: `ids` (new or changed since the
        base) with their vectors and text hashes, and `deleted` (base items that left the
        catalogue). `model_version` must be the base's: a delta never mixes versions."""
        if base.manifest.get("base") is not None:
            raise SnapshotError(f"snapshot {base.version} is itself a delta: a delta's base is a full snapshot")
        m = base.manifest
        if model_version != m["model_version"]:
            raise SnapshotError(f"item delta embedded by model {model_version}, its base {base.version} "
                                f"by {m['model_version']}: a snapshot never mixes model versions")
        if len(ids):
            _check_rows("item", ids, vectors)
        if len(ids) and vectors.shape[1] != m["dim"]:
            raise SnapshotError(f"item delta vectors have dim {vectors.shape[1]}, base {base.version} {m['dim']}")
        base_ids = set(pq.read_table(base.path / ITEMS, columns=["item_id"]).column("item_id").to_pylist())
        unknown = set(deleted) - base_ids
        if unknown:
            raise SnapshotError(f"deleted items {sorted(unknown)[:5]} are not in base {base.version}")
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.dir, prefix=".staging-"))
        try:
            matrix = normalize(vectors) if len(ids) else np.zeros((0, int(m["dim"])), np.float32)
            pq.write_table(pa.table({"item_id": pa.array(list(ids), pa.string()), "vector": vectors_to_arrow(matrix),
                                     TEXT_HASH: pa.array(list(hashes), pa.string())}), staging / ITEM_DELTA)
            pq.write_table(pa.table({"item_id": pa.array(sorted(deleted), pa.string())}), staging / DELETED)
            now = time.time()
            live = len(base_ids - set(deleted) - set(ids)) + len(ids)
            kept = {k: m[k] for k in ("model_version", "embedder", "dim", "normalized", "metric", "num_users",
                                      "index", "sequence_rules", "sequences_until_ms") if k in m}
            manifest = {**kept, "format": FORMAT, "task": self.task, "base": base.version,
                        "created_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                        "created_ts": now, "num_items": live,
                        "item_delta": {"items": len(ids), "deleted": len(deleted)},
                        "files": {"item_delta": ITEM_DELTA, "deleted": DELETED}, **(extra or {})}
            return self._publish(staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _publish(self, staging: Path, manifest: dict[str, Any]) -> SnapshotRef:
        existing = self.versions()
        number = int(existing[-1]) + 1 if existing else 1
        while True:
            version = f"{number:06d}"
            manifest = {**manifest, "version": version}
            self.files.write_bytes(str(staging / MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
            if self.files.publish_dir(staging, self.dir / version):  # a concurrent writer may take it
                break
            number += 1
        self.files.advance_pointer(self.dir / LATEST, version)
        return SnapshotRef(self.task, version, self.dir / version, manifest)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions (never LATEST); returns what was deleted.

        Serving holds the snapshot it answers from in memory, so deleting files does not disturb
        in-flight requests; keeping a few versions leaves room for a replica that is still loading.
        """
        versions = self.versions()
        kept = {self.latest_version(), self.pinned_version(), *(versions[-keep:] if keep > 0 else versions)}
        kept |= {self._base_version(v) for v in kept if v is not None}  # a kept delta needs its base
        doomed = [v for v in versions[:-keep] if v not in kept] if keep > 0 else []
        for version in doomed:
            shutil.rmtree(self.dir / version, ignore_errors=True)
        return doomed


class SnapshotWriter:
    """Stages one snapshot; `publish` builds the index, writes the manifest and moves LATEST.

        with store.writer() as w:
            w.write_items(item_ids, item_vectors)
            w.write_users(user_ids, user_vectors)    # or Ray Data writes Parquet into w.users_dir
            ref = w.publish(model_version=..., embedder={...}, build_index=...)
    """

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        store.dir.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(dir=store.dir, prefix=".staging-"))
        self.users_dir = self.staging / USERS
        self.users_dir.mkdir()
        self._item_ids: list[str] | None = None
        self._item_vectors: np.ndarray | None = None
        self.published: SnapshotRef | None = None

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.published is None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def write_items(self, item_ids: list[str], vectors: np.ndarray, hashes: list[str | None] | None = None) -> None:
        """`hashes`: `text_hash` of the text each item was embedded from (item cycles compare them)."""
        _check_rows("item", item_ids, vectors)
        self._item_ids = list(item_ids)
        self._item_vectors = normalize(vectors)
        columns = {"item_id": pa.array(self._item_ids, pa.string()), "vector": vectors_to_arrow(self._item_vectors)}
        if hashes is not None:
            if len(hashes) != len(item_ids):
                raise SnapshotError(f"{len(item_ids)} items but {len(hashes)} text hashes")
            columns[TEXT_HASH] = pa.array(list(hashes), pa.string())
        pq.write_table(pa.table(columns), self.staging / ITEMS)
        pq.write_table(pa.table({"faiss_id": pa.array(np.arange(len(item_ids), dtype=np.int64)),
                                 "item_id": pa.array(self._item_ids, pa.string())}), self.staging / ITEM_ID_MAP)

    def write_users(self, user_ids: list[str], vectors: np.ndarray, part: int = 0,
                    tails: list[list[str]] | None = None) -> None:
        """`tails`: each user's sequence tail (item ids, oldest first, read with the model's
        sequence rules), which real-time serving extends with the user's live events."""
        _check_rows("user", user_ids, vectors)
        columns = {"user_id": pa.array(list(user_ids), pa.string()), "vector": vectors_to_arrow(normalize(vectors))}
        if tails is not None:
            if len(tails) != len(user_ids):
                raise SnapshotError(f"{len(user_ids)} users but {len(tails)} sequence tails")
            columns[TAIL] = pa.array([list(t) for t in tails], pa.list_(pa.string()))
        pq.write_table(pa.table(columns), self.users_dir / f"part-{part:05d}.parquet")

    def write_user_part(self, table: pa.Table, part: int) -> None:
        """One part of the users from a batch job: `user_id`, already normalised `vector` and
        optionally `tail` (the sequence tail the vector was computed from)."""
        if table.num_rows:
            if not np.isfinite(vectors_from_arrow(table.column("vector"))).all():
                raise SnapshotError("user vectors contain NaN or infinity")
            pq.write_table(table, self.users_dir / f"part-{part:05d}.parquet")

    def reuse_users(self, previous: SnapshotRef) -> None:
        """Carry the user vectors of `previous` over (an items-only cycle of the same model)."""
        for path in sorted((previous.path / USERS).glob("*.parquet")):
            target = self.users_dir / path.name
            try:
                os.link(path, target)  # snapshots are immutable: a hard link is a safe copy
            except OSError:
                shutil.copy2(path, target)

    def publish(self, model_version: str, embedder: dict[str, Any], build_index: IndexBuilder,
                extra: dict[str, Any] | None = None, recall_queries: int = 500) -> SnapshotRef:
        """Build the index over the items (`build_index(items, sampled user vectors)`, e.g.
        `precise.predict.index.build_and_measure`), write the manifest, publish, move LATEST."""
        if self._item_vectors is None or self._item_ids is None:
            raise SnapshotError("write_items before publish: a snapshot needs its item vectors")
        items = self._item_vectors
        user_files = sorted(self.users_dir.glob("*.parquet"))
        num_users = sum(pq.ParquetFile(p).metadata.num_rows for p in user_files)
        distinct = len(set().union(*(pq.read_table(p, columns=["user_id"]).column("user_id").to_pylist()
                                     for p in user_files)))
        if distinct != num_users:
            raise SnapshotError(f"{num_users - distinct} duplicate user ids across the user files")
        sample = _sample_user_vectors(user_files, recall_queries)
        if len(sample) and sample.shape[1] != items.shape[1]:
            raise SnapshotError(f"user vectors have dim {sample.shape[1]}, item vectors {items.shape[1]}")
        index, info = build_index(items, sample)
        faiss.write_index(index, str(self.staging / INDEX))
        now = time.time()
        manifest = {
            "format": FORMAT,
            "task": self.store.task,
            "model_version": model_version,
            "embedder": embedder,
            "created_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            "created_ts": now,
            "num_items": len(self._item_ids),
            "num_users": num_users,
            "dim": int(items.shape[1]),
            "normalized": True,
            "metric": "inner_product",
            "index": info.to_json(),
            "files": {"items": ITEMS, "item_id_map": ITEM_ID_MAP, "index": INDEX, "users": USERS + "/"},
            **(extra or {}),
        }
        self.published = self.store._publish(self.staging, manifest)
        return self.published


def _check_rows(kind: str, ids: list[str], vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise SnapshotError(f"{len(ids)} {kind} ids but vectors of shape {vectors.shape}")
    if len(set(ids)) != len(ids):
        raise SnapshotError(f"duplicate {kind} ids")
    if not np.isfinite(vectors).all():
        raise SnapshotError(f"{kind} vectors contain NaN or infinity")


def _sample_user_vectors(files: list[Path], limit: int) -> np.ndarray:
    """Up to `limit` user vectors from the first files (the recall@k queries)."""
    parts: list[np.ndarray] = []
    have = 0
    for path in files:
        if have >= limit:
            break
        vectors = vectors_from_arrow(pq.read_table(path, columns=["vector"]).column("vector"))
        if len(vectors):
            parts.append(vectors[: limit - have])
            have += len(parts[-1])
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


# ---- reading (serving) -------------------------------------------------------------------------


def base_ref(ref: SnapshotRef) -> SnapshotRef:
    """The full snapshot a delta is over; `ref` itself for a full snapshot."""
    base = ref.manifest.get("base")
    return ref if base is None else SnapshotStore(ref.path.parent.parent.parent, ref.task).get(base)


@dataclass(frozen=True)
class ItemDelta:
    """What an item delta changes in its base: new or changed items, and base items that left."""

    item_ids: list[str]
    vectors: np.ndarray
    hashes: list[str | None]
    deleted: list[str]


def read_item_delta(ref: SnapshotRef) -> ItemDelta | None:
    """The delta of an item-delta snapshot; None for a full snapshot."""
    if ref.manifest.get("base") is None:
        return None
    table = pq.read_table(ref.path / ITEM_DELTA)
    deleted = pq.read_table(ref.path / DELETED).column("item_id").to_pylist()
    dim = int(ref.manifest["dim"])
    vectors = vectors_from_arrow(table.column("vector")) if table.num_rows else np.zeros((0, dim), np.float32)
    return ItemDelta(table.column("item_id").to_pylist(), vectors, table.column(TEXT_HASH).to_pylist(), deleted)


def read_item_hashes(ref: SnapshotRef) -> dict[str, str | None]:
    """item -> the text hash its vector was embedded from (None: not recorded), for every item
    `ref` serves (a delta's effective catalogue)."""
    base = base_ref(ref)
    schema = pq.ParquetFile(base.path / ITEMS).schema_arrow.names
    table = pq.read_table(base.path / ITEMS, columns=["item_id", TEXT_HASH] if TEXT_HASH in schema else ["item_id"])
    ids = table.column("item_id").to_pylist()
    hashes = table.column(TEXT_HASH).to_pylist() if TEXT_HASH in schema else [None] * len(ids)
    out = dict(zip(ids, hashes, strict=True))
    delta = read_item_delta(ref)
    if delta is not None:
        for item in delta.deleted:
            out.pop(item, None)
        out.update(zip(delta.item_ids, delta.hashes, strict=True))
    return out


def read_items(ref: SnapshotRef) -> tuple[list[str], np.ndarray]:
    """(item ids, vectors) `ref` serves: a delta's are its base's that it keeps, then its own."""
    base = base_ref(ref)
    table = pq.read_table(base.path / ITEMS, columns=["item_id", "vector"])
    ids, vectors = table.column("item_id").to_pylist(), vectors_from_arrow(table.column("vector"))
    delta = read_item_delta(ref)
    if delta is None:
        return ids, vectors
    gone = set(delta.deleted) | set(delta.item_ids)
    keep = [n for n, item in enumerate(ids) if item not in gone]
    return [ids[n] for n in keep] + delta.item_ids, np.concatenate([vectors[keep], delta.vectors])


def read_users(ref: SnapshotRef) -> tuple[list[str], np.ndarray]:
    ref = base_ref(ref)  # a delta serves its base's users
    files = sorted((ref.path / USERS).glob("*.parquet"))
    if not files:
        return [], np.zeros((0, int(ref.manifest["dim"])), dtype=np.float32)
    table = pa.concat_tables([pq.read_table(p, columns=["user_id", "vector"]) for p in files])
    return table.column("user_id").to_pylist(), vectors_from_arrow(table.column("vector"))


def read_user_tails(ref: SnapshotRef) -> dict[str, list[str]]:
    """user -> sequence tail (oldest first) for snapshots that store them; {} for older ones."""
    tails: dict[str, list[str]] = {}
    ref = base_ref(ref)
    for path in sorted((ref.path / USERS).glob("*.parquet")):
        if TAIL not in pq.ParquetFile(path).schema_arrow.names:
            continue
        table = pq.read_table(path, columns=["user_id", TAIL])
        tails.update(zip(table.column("user_id").to_pylist(), table.column(TAIL).to_pylist(), strict=True))
    return tails


def read_index(ref: SnapshotRef) -> tuple[faiss.Index, IndexInfo]:
    """The FAISS index of a full snapshot (of a delta: its base's; serving adds the delta to it)."""
    ref = base_ref(ref)
    index = faiss.read_index(str(ref.path / INDEX))
    meta = ref.manifest["index"]
    known = {f.name for f in dataclasses.fields(IndexInfo)}  # a newer writer may record more
    return index, IndexInfo(**{k: v for k, v in meta.items() if k in known})
