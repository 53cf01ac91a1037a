"""The event lake: layout, file names, schemas, the offset ledger, and readers for other stages.

Layout under the storage root (local path or URI):

    lake/_ledger/{N}.json                           ledger version N: next offset per topic-partition
    lake/_ledger/_latest                            hint: the newest N (readers probe past it)
    lake/events/date=YYYY-MM-DD/p{P}-{S}-{E}.parquet   valid events, by event date (UTC)
    lake/dead_letter/topic=<topic>/p{P}-{S}-{E}.parquet rejected records, raw bytes and reason
    lake/items/items.parquet                        latest text and first-seen time per item
    sequences/<name>/bucket-{B}.parquet (+ _state.json)  per-user sequences (precise.store.sequences)

`p{P}-{S}-{E}` names the Kafka partition P and the offset range [S, E) the file came from, so a
batch re-run after a crash writes the same names and overwrites. The ledger is written after the
data it covers. A file is *committed* when its range lies below the ledger's next offset for its
partition; a file at or above it was left by a batch that crashed before committing, is ignored by
every reader here, and is deleted by the next ingest run before it writes the range again.

The ledger is a sequence of versions (as Delta Lake's log): a commit *creates* version N+1 of the
version N it read, create-if-absent (`Files.create`), so of two writers that read N exactly one
commits; the other gets `LedgerConflict` and stops without writing further. That holds on object
stores and volumes shared between nodes, where no lock does. Readers take the newest version: the
`_latest` hint, then a probe past it (two small reads). The last LEDGER_KEEP versions are kept. A
lake from before versions (`lake/_ledger.json`) is read as version 0 and migrated by its first
commit (ingest commits a version when it starts).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from precise.store.files import Files

LEDGER_VERSION = 1
# Imported histories (precise.ingest.history) are partitions of the events at and above this number:
# row r of import k is offset r of partition IMPORT_PARTITION_BASE + k, so its files, dead letters
# and commits are those of a Kafka partition (no real topic has a million partitions)
IMPORT_PARTITION_BASE = 1_000_000
LEDGER_KEEP = 100  # ledger versions kept (older ones are deleted by later commits)
_LEDGER_NAME = re.compile(r"^(\d{12})\.json$")
_FILE_NAME = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("scene", pa.string()),
    ("action", pa.string()),
    ("ts", pa.int64()),  # event time, epoch ms
    ("value", pa.float64()),  # e.g. the rating; null when absent
    ("extra", pa.string()),  # unknown fields of the event as a JSON object; null when none
    ("partition", pa.int32()),  # where it came from in Kafka
    ("offset", pa.int64()),  # the lake's offset: Kafka's, + Ledger.offset_base if the topic was re-created
    ("kafka_ts", pa.int64()),  # Kafka record timestamp, epoch ms
    ("ingest_ts", pa.int64()),  # wall clock of the batch that wrote it, epoch ms
])

DEAD_LETTER_SCHEMA = pa.schema([
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("kafka_ts", pa.int64()),
    ("reason", pa.string()),  # what is wrong, naming the field
    ("reason_kind", pa.string()),  # a small fixed vocabulary (precise.ingest.validate.REASON_KINDS)
    ("key", pa.binary()),  # the record as it arrived
    ("value", pa.binary()),
    ("ingest_ts", pa.int64()),
])

ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("text", pa.string()),  # latest known text
    ("scene", pa.string()),
    ("created_ts", pa.int64()),
    ("extra", pa.string()),
    ("first_seen_ts", pa.int64()),  # Kafka timestamp of the item's first record
    ("updated_ts", pa.int64()),  # Kafka timestamp of its latest record
    ("deleted", pa.bool_()),  # latest record was a tombstone (null value)
    ("partition", pa.int32()),  # latest record's position in the item topic
    ("offset", pa.int64()),
])


@dataclass(frozen=True)
class Layout:
    """Where each part of the lake lives under a storage root."""

    storage: Files

    @property
    def lake(self) -> str:
        return self.storage.path("lake")

    @property
    def ledger(self) -> str:
        """The single-file ledger of lakes written before ledger versions (read, never written)."""
        return self.storage.path("lake", "_ledger.json")

    @property
    def ledger_dir(self) -> str:
        return self.storage.path("lake", "_ledger")

    def ledger_version(self, n: int) -> str:
        return f"{self.ledger_dir}/{n:012d}.json"

    @property
    def ledger_hint(self) -> str:
        return f"{self.ledger_dir}/_latest"

    @property
    def lock(self) -> str:
        return self.storage.path("lake", "_ingest.lock")

    @property
    def events(self) -> str:
        return self.storage.path("lake", "events")

    @property
    def dead_letter(self) -> str:
        return self.storage.path("lake", "dead_letter")

    @property
    def items(self) -> str:
        return self.storage.path("lake", "items", "items.parquet")

    def event_file(self, date: str, partition: int, start: int, end: int) -> str:
        return f"{self.events}/date={date}/{range_file_name(partition, start, end)}"

    def dead_letter_file(self, topic: str, partition: int, start: int, end: int) -> str:
        return f"{self.dead_letter}/topic={topic}/{range_file_name(partition, start, end)}"


def range_file_name(partition: int, start: int, end: int) -> str:
    """`p{partition}-{start}-{end}.parquet` for offsets [start, end), zero-padded to sort."""
    return f"p{partition:04d}-{start:012d}-{end:012d}.parquet"


def parse_range_file_name(path: str) -> tuple[int, int, int] | None:
    """(partition, start, end) of a lake data file, None for anything else."""
    match = _FILE_NAME.match(path.rsplit("/", 1)[-1])
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def spans(paths: list[str]) -> dict[tuple[str, int], list[tuple[int, int, str]]]:
    """The lake's range files by (folder, partition): their (start, end, path), sorted."""
    out: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for path in paths:
        parsed = parse_range_file_name(path)
        if parsed is not None:
            out.setdefault((path.rsplit("/", 1)[0], parsed[0]), []).append((parsed[1], parsed[2], path))
    return {key: sorted(ranges) for key, ranges in out.items()}


def superseded(paths: list[str]) -> set[str]:
    """Files whose (partition, range) lies strictly inside a wider file's in the same folder: the
    sources of a compaction (precise.ingest.compact), hidden from every reader once it is written."""
    out: set[str] = set()
    for ranges in spans(paths).values():
        if len(ranges) < 2:
            continue
        for start, end, path in ranges:
            if any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in ranges):
                out.add(path)
    return out


@dataclass
class Ledger:
    """Per topic-partition, the next offset to read; everything below it is in the lake."""

    offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    events_topic: str | None = None
    items_topic: str | None = None
    batches: int = 0
    committed_at_ms: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    # Offsets Kafka retention deleted before they were ingested: {topic, partition, start, end,
    # detected_at_ms}, appended when the batch that skipped them commits (totals: retention_gap_records)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    # Kafka's topic id of each topic the offsets belong to: a topic deleted and re-created (same
    # name, offsets from 0 again) has a new id, and ingest starts a new *incarnation* of it
    topic_ids: dict[str, str] = field(default_factory=dict)
    # Per topic and partition, what is added to the Kafka offsets of the topic's current incarnation
    # to give the lake's offsets (ledger offsets, range file names, the `offset` column): the next
    # offset the previous incarnation reached, so the new incarnation's files never collide with
    # (nor lie inside) the old ones. Absent: 0, the lake's offsets are Kafka's.
    offset_base: dict[str, dict[int, int]] = field(default_factory=dict)
    # Earlier incarnations of re-created topics: {topic, topic_id, offsets (lake), offset_base,
    # ended_at_ms, new_topic_id}, oldest first
    incarnations: list[dict[str, Any]] = field(default_factory=list)
    rewinds: list[dict[str, Any]] = field(default_factory=list)  # `precise lake rewind` history
    writer_generation: int = 0  # the writer lease generation of the job that committed this ledger
    # histories imported into the lake (precise.ingest.history): name, sha256, partition, status
    imports: list[dict[str, Any]] = field(default_factory=list)
    version: int = field(default=0, compare=False)  # the ledger version read (0: none yet); not stored

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The lake's next offset (Kafka's next offset + `base(topic, partition)`)."""
        return self.offsets.get(topic, {}).get(partition)

    def base(self, topic: str, partition: int) -> int:
        """Lake offset - Kafka offset for the topic's current incarnation (0 unless re-created)."""
        return self.offset_base.get(topic, {}).get(partition, 0)

    def to_json(self) -> bytes:
        return json.dumps({
            "version": LEDGER_VERSION,
            "events_topic": self.events_topic,
            "items_topic": self.items_topic,
            "batches": self.batches,
            "committed_at_ms": self.committed_at_ms,
            "offsets": {t: {str(p): o for p, o in sorted(parts.items())} for t, parts in self.offsets.items()},
            "totals": self.totals,
            "gaps": self.gaps,
            "topic_ids": self.topic_ids,
            "rewinds": self.rewinds,
            "writer_generation": self.writer_generation,
            "imports": self.imports,
            "offset_base": {t: {str(p): o for p, o in sorted(parts.items())} for t, parts in self.offset_base.items()},
            "incarnations": self.incarnations,
        }, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Ledger:
        raw = json.loads(data)
        if raw.get("version") != LEDGER_VERSION:
            raise ValueError(f"ledger version {raw.get('version')!r} is not {LEDGER_VERSION}")
        return cls(offsets={t: {int(p): int(o) for p, o in parts.items()} for t, parts in raw["offsets"].items()},
                   events_topic=raw.get("events_topic"), items_topic=raw.get("items_topic"),
                   batches=int(raw.get("batches", 0)), committed_at_ms=int(raw.get("committed_at_ms", 0)),
                   totals=dict(raw.get("totals", {})), gaps=list(raw.get("gaps", [])),
                   topic_ids=dict(raw.get("topic_ids", {})), rewinds=list(raw.get("rewinds", [])),
                   writer_generation=int(raw.get("writer_generation", 0)),
                   imports=list(raw.get("imports", [])),
                   offset_base={t: {int(p): int(o) for p, o in parts.items()}
                                for t, parts in raw.get("offset_base", {}).items()},
                   incarnations=list(raw.get("incarnations", [])))


def is_import_partition(partition: int) -> bool:
    """An events partition that holds an imported history, not a Kafka partition."""
    return partition >= IMPORT_PARTITION_BASE


class WriterFenced(RuntimeError):
    """Another writer took the lake over: this one stops without writing further."""


class LedgerConflict(WriterFenced):
    """The ledger version this writer meant to commit was committed by another writer."""


def _latest_version(storage: Files) -> int:
    """The newest ledger version (0: none): the hint, probed forward; a listing without a hint."""
    layout = Layout(storage)
    hint = storage.read_bytes(layout.ledger_hint)
    n = int(hint) if hint and hint.strip().isdigit() else 0
    if n == 0 or not storage.exists(layout.ledger_version(n)):  # no hint, or pruned past it
        names = [_LEDGER_NAME.match(p.rsplit("/", 1)[-1]) for p in storage.list_files(layout.ledger_dir, False)]
        n = max((int(m[1]) for m in names if m), default=0)
    while storage.exists(layout.ledger_version(n + 1)):
        n += 1
    return n


def has_ledger(storage: Files) -> bool:
    """Whether anything was ever committed to this lake (a ledger version, or a pre-version ledger)."""
    return _latest_version(storage) > 0 or storage.exists(Layout(storage).ledger)


def load_ledger(storage: Files) -> Ledger:
    """The newest committed ledger (an empty one for a new lake)."""
    layout = Layout(storage)
    for _ in range(5):  # a version pruned between finding and reading it: look again
        n = _latest_version(storage)
        if n == 0:
            data = storage.read_bytes(layout.ledger)
            return Ledger() if data is None else Ledger.from_json(data)
        data = storage.read_bytes(layout.ledger_version(n))
        if data is not None:
            return replace(Ledger.from_json(data), version=n)
    raise RuntimeError(f"the ledger of {storage.uri} kept changing while it was read")


def save_ledger(storage: Files, ledger: Ledger, stamp: bool = True) -> None:
    """Commit `ledger` as the version after the one it was read at (`ledger.version`), the commit
    point of a batch: create-if-absent, so a writer that lost the lake to another one raises
    LedgerConflict instead. On success `ledger.version` is the new version.

    `stamp`: set `committed_at_ms` to now (False for a commit that adds no data, e.g. the fence
    commit of a starting writer, so the time keeps saying when data last arrived)."""
    layout = Layout(storage)
    n = ledger.version + 1
    if stamp:
        ledger.committed_at_ms = int(time.time() * 1000)
    if not storage.create(layout.ledger_version(n), ledger.to_json()):
        raise LedgerConflict(f"fenced: ledger version {n} of the lake at {storage.uri} was committed by another "
                             f"writer (this one read version {n - 1}); this job stops without writing further")
    ledger.version = n
    storage.write_bytes(layout.ledger_hint, str(n).encode())  # a hint: readers probe past a stale one
    if n > LEDGER_KEEP:
        storage.delete(layout.ledger_version(n - LEDGER_KEEP))


def split_committed(paths: list[str], offsets: dict[int, int]) -> tuple[list[str], list[str]]:
    """(committed, uncommitted) range files, given one topic's next offset per partition."""
    committed, uncommitted = [], []
    for path in paths:
        parsed = parse_range_file_name(path)
        if parsed is None:
            continue
        partition, start, _ = parsed
        (committed if start < offsets.get(partition, 0) else uncommitted).append(path)
    return committed, uncommitted


def _dead_letter_files(storage: Files, topic: str | None) -> list[str]:
    return storage.list_files(f"{Layout(storage).dead_letter}/topic={topic}") if topic else []


# ---- readers for other stages (training, tools, tests) -------------------------------------------


def event_files(root: str | os.PathLike[str] | Files) -> list[str]:
    """Paths (on `Files(root).fs`) of the committed event files, oldest partition ranges first;
    files superseded by a compacted one (`precise.ingest.compact`) are left out."""
    storage = root if isinstance(root, Files) else Files(root)
    ledger = load_ledger(storage)
    if ledger.events_topic is None:
        return []
    committed, _ = split_committed(storage.list_files(Layout(storage).events),
                                   ledger.offsets.get(ledger.events_topic, {}))
    old = superseded(committed)
    return [path for path in committed if path not in old]


def read_events(root: str | os.PathLike[str] | Files, columns: list[str] | None = None) -> pa.Table:
    """Every committed event (pyarrow; for tools and tests; use `events_dataset` for big lakes)."""
    storage = root if isinstance(root, Files) else Files(root)
    files = event_files(storage)
    if not files:
        return EVENT_SCHEMA.empty_table().select(columns or EVENT_SCHEMA.names)
    return pa.concat_tables(pq.read_table(f, columns=columns, filesystem=storage.fs, partitioning=None)
                            for f in files)


def events_dataset(root: str | os.PathLike[str], columns: list[str] | None = None, files_per_task: int = 256) -> Any:
    """The committed events as a Ray Dataset (one block per group of files).

    Not `ray.data.read_parquet(files)`: the lake holds many small files (one per partition, day and
    batch) and read_parquet's per-file planning took ~45 s for 600 files on a 2-core machine,
    where reading them with pyarrow inside a few Ray tasks takes about a second.
    """
    import ray

    storage = Files(root)
    files = event_files(storage)
    if not files:
        return ray.data.from_arrow(EVENT_SCHEMA.empty_table().select(columns or EVENT_SCHEMA.names))
    groups = [files[i:i + files_per_task] for i in range(0, len(files), files_per_task)]
    return ray.data.from_items([{"files": g} for g in groups], override_num_blocks=len(groups)).map_batches(
        read_parquet_files, batch_format="pyarrow", batch_size=1,
        fn_kwargs={"filesystem": storage.fs, "columns": columns})


def read_parquet_files(batch: pa.Table, filesystem: Any, columns: list[str] | None) -> pa.Table:
    """Ray task body: read the files listed in `batch["files"]` with pyarrow (no partition columns)."""
    import pyarrow.dataset as pads

    files = [path for paths in batch.column("files").to_pylist() for path in paths]
    return pads.dataset(files, format="parquet", filesystem=filesystem).to_table(columns=columns)


def read_dead_letters(root: str | os.PathLike[str] | Files) -> pa.Table:
    """Every committed dead-letter record, of both topics."""
    storage = root if isinstance(root, Files) else Files(root)
    ledger = load_ledger(storage)
    tables = []
    for topic in (ledger.events_topic, ledger.items_topic):
        committed, _ = split_committed(_dead_letter_files(storage, topic), ledger.offsets.get(topic or "", {}))
        tables += [pq.read_table(f, filesystem=storage.fs, partitioning=None) for f in committed]
    return pa.concat_tables(tables) if tables else DEAD_LETTER_SCHEMA.empty_table()


def read_items(root: str | os.PathLike[str] | Files) -> pa.Table:
    """The item table (latest version of every item seen on the item topic)."""
    storage = root if isinstance(root, Files) else Files(root)
    path = Layout(storage).items
    if not storage.exists(path):
        return ITEM_SCHEMA.empty_table()
    return pq.read_table(path, filesystem=storage.fs, partitioning=None)
