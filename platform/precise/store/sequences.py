"""Per-user sequences in the store: their schema, where they live, their build state, readers, and
**the** train / validation / test split.

    sequences/<name>/bucket-{B:04d}.parquet   SEQUENCE_SCHEMA, one row per user, sorted by user_id
    sequences/<name>/_state.json              the lake offsets the build covers, and its fingerprint
    sequences/_build.lock                     held by the one sequence build at a time

`name` is a sequence family of the config (`sequences.all_scene`, `sequences.targets`). The
builder that writes them is `precise.ingest.sequences`; training and prediction read them here.
Events are ordered by time, then arrival (the Kafka offset; a user's events share a partition),
in every family.

The split (paper section V: leave-one-out by time) is cut per user on the *reference* family, the
all-scene sequence S_u: its last event is the test event, the one before the validation event.
Every family is cut at the same two moments, so universal and targeted training see exactly the
same past, and nothing held out of one leaks into the other through the warm start:

* training items: the family's events before the validation cut (in S_u: S_u[:-2]);
* validation: history = those, label = the family's first event at or after the validation cut and
  before the test cut (in S_u: S_u[-2]);
* test: history = the family's events before the test cut, label = its first event at or after it
  (in S_u: S_u[-1]).

A cut is the (ts, offset) of the reference event: the same moment in every family (an event two
families share has one offset; a `like` produced right after its rating comes after it). A user
with fewer than 3 reference events has no validation or test case: everything is training.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from precise.store.files import Files

SEQUENCE_SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_ids", pa.list_(pa.string())),  # oldest first
    ("ts", pa.list_(pa.int64())),  # event time of each item, epoch ms
    ("event_ids", pa.list_(pa.string())),  # lineage back to the lake (and what merging dedupes on)
    ("offsets", pa.list_(pa.int64())),  # each event's Kafka offset: its arrival order within a timestamp
    ("length", pa.int32()),
])
STATE = "_state.json"
FORMAT = 3  # of the stored rows and their order; a build of another format is redone in full


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


# ---- the split ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One family's users and items, cut at the reference family's validation and test moments.

    Per user `u` (row r): `items[r]` oldest first (all of them: what serving embeds);
    `items[r][:train_len[r]]` are training items; validation label `items[r][train_len[r]]` when
    `has_valid[r]`; test history `items[r][:test_len[r]]`, label `items[r][test_len[r]]` when
    `has_test[r]`.
    """

    family: str
    users: tuple[str, ...]
    items: tuple[list[str], ...]
    ts: tuple[list[int], ...]
    train_len: np.ndarray
    test_len: np.ndarray
    has_valid: np.ndarray
    has_test: np.ndarray

    def row_of(self) -> dict[str, int]:
        return {user: row for row, user in enumerate(self.users)}

    def training_items(self) -> list[list[str]]:
        return [items[:n] for items, n in zip(self.items, self.train_len.tolist(), strict=True)]

    def cases(self, which: str) -> tuple[list[int], list[list[str]], list[str]]:
        """(rows, histories, labels) of the validation (`valid`) or test (`test`) cases."""
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        has, cut = (self.has_valid, self.train_len) if which == "valid" else (self.has_test, self.test_len)
        rows = np.flatnonzero(has).tolist()
        return rows, [self.items[r][: cut[r]] for r in rows], [self.items[r][cut[r]] for r in rows]


def _cuts(reference: pa.Table) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """user -> ((ts, offset) of the validation event, (ts, offset) of the test event), for users
    with at least 3 reference events."""
    out = {}
    for user, ts, offsets in zip(reference.column("user_id").to_pylist(), reference.column("ts").to_pylist(),
                                 reference.column("offsets").to_pylist(), strict=True):
        if len(ts) >= 3:
            out[user] = ((ts[-2], offsets[-2]), (ts[-1], offsets[-1]))
    return out


def split(reference: pa.Table, family: pa.Table | None = None, name: str = "") -> Split:
    """The split of `family` (default: the reference family itself) at the reference's cuts."""
    cuts = _cuts(reference)
    table = reference if family is None else family
    users = table.column("user_id").to_pylist()
    items = table.column("item_ids").to_pylist()
    stamps = table.column("ts").to_pylist()
    offsets = table.column("offsets").to_pylist()
    train_len = np.zeros(len(users), dtype=np.int64)
    test_len = np.zeros(len(users), dtype=np.int64)
    for row, (user, seq, ts, offs) in enumerate(zip(users, items, stamps, offsets, strict=True)):
        cut = cuts.get(user)
        if cut is None:
            train_len[row] = test_len[row] = len(seq)
        elif family is None:  # the reference itself: by position
            train_len[row], test_len[row] = len(seq) - 2, len(seq) - 1
        else:
            keys = list(zip(ts, offs, strict=True))  # sorted: the builder's order
            train_len[row] = bisect.bisect_left(keys, cut[0])
            test_len[row] = bisect.bisect_left(keys, cut[1])
    lengths = np.array([len(seq) for seq in items], dtype=np.int64)
    has_cut = np.array([user in cuts for user in users], dtype=bool)
    return Split(
        family=name, users=tuple(users), items=tuple(items), ts=tuple(stamps), train_len=train_len,
        test_len=test_len,
        # a case needs a history and a label inside its window
        has_valid=has_cut & (train_len >= 1) & (train_len < test_len),
        has_test=has_cut & (test_len >= 1) & (test_len < lengths),
    )


def cut_before(sequences: pa.Table, until_ts: int | None) -> pa.Table:
    """Each user's events with ts < `until_ts` (users with none are dropped): a pipeline cycle
    trains on the events before its boundary, whatever the lake already holds beyond it."""
    if until_ts is None or sequences.num_rows == 0:
        return sequences
    keep = [int(np.searchsorted(np.asarray(ts, dtype=np.int64), until_ts)) for ts in sequences.column("ts").to_pylist()]
    rows = [r for r, n in enumerate(keep) if n]
    table = sequences.take(pa.array(rows, pa.int64()))
    counts = [keep[r] for r in rows]

    def head(column: str) -> pa.Array:
        values = table.column(column).to_pylist()
        return pa.array([v[:n] for v, n in zip(values, counts, strict=True)], table.schema.field(column).type)

    return pa.table({"user_id": table.column("user_id"), "item_ids": head("item_ids"), "ts": head("ts"),
                     "event_ids": head("event_ids"), "offsets": head("offsets"),
                     "length": pa.array(counts, pa.int32())}, schema=SEQUENCE_SCHEMA)


def last_event_ts(sequences: pa.Table) -> int | None:
    """The newest event time of the table (the end of a training window)."""
    if sequences.num_rows == 0:
        return None
    return pc.max(pc.list_flatten(sequences.column("ts"))).as_py()
