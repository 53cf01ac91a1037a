"""Per-user sequences in the store: their schema, where they live, their build state, readers.

    sequences/<name>/bucket-{B:04d}.parquet   SEQUENCE_SCHEMA, one row per user, sorted by user_id
    sequences/<name>/_state.json              the lake offsets the build covers, and its fingerprint
    sequences/_build.lock                     held by the one sequence build at a time

`name` is a sequence family of the config (`sequences.all_scene`, `sequences.targets`). The
builder that writes them is `precise.ingest.sequences`; training and prediction read them here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from precise.store.files import Files

SEQUENCE_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_ids", pa.list_(pa.string())),  # oldest first
    ("ts", pa.list_(pa.int64())),  # event time of each item, epoch ms
    ("event_ids", pa.list_(pa.string())),  # lineage back to the lake (and what merging dedupes on)
    ("length", pa.int32()),
    ("train_len", pa.int32()),  # items[:train_len] train; length >= 3: length - 2, else length
    ("valid_item", pa.string()),  # items[length-2] when length >= 3, else null
    ("test_item", pa.string()),  # items[length-1] when length >= 3, else null
])
STATE = "_state.json"


def _files(root: str | os.PathLike[str] | Files) -> Files:
    return root if isinstance(root, Files) else Files(root)


def folder(files: Files, name: str) -> str:
    return files.path("sequences", name)


def bucket_path(files: Files, name: str, bucket: int) -> str:
    return f"{folder(files, name)}/bucket-{bucket:04d}.parquet"


def build_lock(files: Files) -> str:
    return files.path("sequences", "_build.lock")


def read_state(root: str | os.PathLike[str] | Files, name: str) -> dict[str, Any] | None:
    """The build state of family `name` (None before its first build)."""
    files = _files(root)
    data = files.read_bytes(f"{folder(files, name)}/{STATE}")
    return json.loads(data) if data else None


def write_state(files: Files, name: str, state: dict[str, Any]) -> None:
    files.write_bytes(f"{folder(files, name)}/{STATE}", json.dumps(state, indent=1).encode())


def states(files: Files) -> dict[str, dict[str, Any]]:
    """The build state of every family that has one."""
    out = {}
    for path in files.list_files(files.path("sequences")):
        if path.endswith(f"/{STATE}"):
            data = files.read_bytes(path)
            if data:
                out[path.rsplit("/", 2)[-2]] = json.loads(data)
    return out


def sequence_files(root: str | os.PathLike[str] | Files, name: str) -> list[str]:
    files = _files(root)
    return [p for p in files.list_files(folder(files, name), recursive=False)
            if p.rsplit("/", 1)[-1].startswith("bucket-") and p.endswith(".parquet")]


def read_bucket(files: Files, name: str, bucket: int) -> pa.Table | None:
    path = bucket_path(files, name, bucket)
    if not files.exists(path):
        return None
    return pq.read_table(path, filesystem=files.fs, partitioning=None)


def read_sequences(root: str | os.PathLike[str] | Files, name: str) -> pa.Table:
    """All sequences of family `name` (pyarrow), sorted by user id."""
    files = _files(root)
    paths = sequence_files(files, name)
    if not paths:
        return SEQUENCE_SCHEMA.empty_table()
    tables = [pq.read_table(f, filesystem=files.fs, partitioning=None) for f in paths]
    return pa.concat_tables(tables).sort_by("user_id")


def sequences_dataset(root: str, name: str) -> Any:
    """The sequences of family `name` as a Ray Dataset."""
    import ray

    files = Files(root)
    paths = sequence_files(files, name)
    if not paths:
        raise FileNotFoundError(f"no sequences named {name!r} under {files.uri}; run the ingest job first")
    return ray.data.read_parquet(paths, filesystem=files.fs, partitioning=None)
