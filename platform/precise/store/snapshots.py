"""Embedding snapshots (DESIGN section 4): one model version's user and item vectors plus the index.

    <root>/embeddings/<task>/<version>/
        manifest.json          what, from which model, when, how many, index type and its recall@k
        items.parquet          item_id, vector (row i = FAISS id i; L2-normalised)
        item_id_map.parquet    faiss_id, item_id (for readers that need only the index)
        index.faiss            the FAISS index over the item vectors
        users/*.parquet        user_id, vector (L2-normalised; one or more files)
    <root>/embeddings/<task>/LATEST    the newest published version's name
    <root>/embeddings/<task>/PIN       optional: the version to serve instead of LATEST (a rollback)

A snapshot is written into a hidden staging folder, renamed into place under the next free version
number (rename is atomic and fails if a concurrent writer took the number), and only then LATEST is
replaced atomically (temp file, fsync, os.replace), forwards only: a reader that follows LATEST
sees a whole snapshot or the previous one, never a half-written one. Like the model registry, the
root is a local or mounted filesystem (NFS, EFS, a KubeRay PVC).
"""

from __future__ import annotations

import dataclasses
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
TAIL = "tail"  # the users' column of sequence tails


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

    def writer(self) -> SnapshotWriter:
        return SnapshotWriter(self)

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
        kept = {self.latest_version(), self.pinned_version()}
        doomed = [v for v in self.versions()[:-keep] if v not in kept] if keep > 0 else []
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

    def write_items(self, item_ids: list[str], vectors: np.ndarray) -> None:
        _check_rows("item", item_ids, vectors)
        self._item_ids = list(item_ids)
        self._item_vectors = normalize(vectors)
        pq.write_table(pa.table({"item_id": pa.array(self._item_ids, pa.string()),
                                 "vector": vectors_to_arrow(self._item_vectors)}), self.staging / ITEMS)
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


def read_items(ref: SnapshotRef) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(ref.path / ITEMS)
    return table.column("item_id").to_pylist(), vectors_from_arrow(table.column("vector"))


def read_users(ref: SnapshotRef) -> tuple[list[str], np.ndarray]:
    files = sorted((ref.path / USERS).glob("*.parquet"))
    if not files:
        return [], np.zeros((0, int(ref.manifest["dim"])), dtype=np.float32)
    table = pa.concat_tables([pq.read_table(p, columns=["user_id", "vector"]) for p in files])
    return table.column("user_id").to_pylist(), vectors_from_arrow(table.column("vector"))


def read_user_tails(ref: SnapshotRef) -> dict[str, list[str]]:
    """user -> sequence tail (oldest first) for snapshots that store them; {} for older ones."""
    tails: dict[str, list[str]] = {}
    for path in sorted((ref.path / USERS).glob("*.parquet")):
        if TAIL not in pq.ParquetFile(path).schema_arrow.names:
            continue
        table = pq.read_table(path, columns=["user_id", TAIL])
        tails.update(zip(table.column("user_id").to_pylist(), table.column(TAIL).to_pylist(), strict=True))
    return tails


def read_index(ref: SnapshotRef) -> tuple[faiss.Index, IndexInfo]:
    index = faiss.read_index(str(ref.path / INDEX))
    meta = ref.manifest["index"]
    known = {f.name for f in dataclasses.fields(IndexInfo)}  # a newer writer may record more
    return index, IndexInfo(**{k: v for k, v in meta.items() if k in known})
