"""Import an existing history (a Parquet or CSV file) into the event lake, exactly once.

    summary = import_history(config, "ratings.parquet")   # jobs/import_history.py runs this

The file's rows go through what a Kafka record goes through: `ingest.field_mapping`
(precise.events.mapping) and the contract's checks (precise.ingest.validate.validate_records),
duplicate event ids against the whole lake dropped to dead letters, event files by date, dead-letter
files, and the ledger commit (precise.ingest.batch.Ingestor.commit_validated), under the lake's
writer lock and lease. So imported events are ordinary lake events: the sequence builder, training,
compaction and `read_events` see them like ingested ones.

How: import k of a lake is the events partition `IMPORT_PARTITION_BASE + k` (precise.store.lake)
and row r of the file is its offset r. The ledger's `imports` records each import (name, sha256 of
the file, partition, status); rows are committed in chunks of `batch_rows`, each chunk like an
ingest batch. Idempotent: a file whose sha256 the ledger lists as done is not imported again; an
import that crashed resumes after its last committed chunk (the next writer first removes what the
crash left above the ledger); and event ids are unique in the lake, so the same events in another
file (or already ingested from Kafka) become `duplicate_event_id` dead letters, never a second copy.
Without an `event_id` in the mapping, ids are derived from the content (precise.events.mapping).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import logging
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from precise.config import EVENT_FIELDS, ITEM_FIELDS, FieldMapping, ItemFieldMapping, PreciseConfig
from precise.ingest.batch import Ingestor
from precise.ingest.validate import validate_records
from precise.store.lake import IMPORT_PARTITION_BASE, Layout

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
_REQUIRED = ("user_id", "item_id", "scene", "action", "ts")  # contract fields every row must have
_ID_FIELDS = ("event_id", "user_id", "item_id", "scene", "action")


class HistoryError(ValueError):
    """An input that cannot be imported as given (a missing file or column, an unknown format)."""


def input_format(path: Path, fmt: str | None = None) -> str:
    """`parquet` or `csv`, from `fmt` or the file name (.parquet/.pq, .csv/.tsv, also .gz)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise HistoryError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zst")]
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet"
    if last in (".csv", ".tsv", ".txt"):
        return "csv"
    raise HistoryError(f"{path}: cannot tell the format from the name; pass --format parquet or --format csv")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Kind:
    """What an import brings in: events (the events topic) or catalogue items (the items topic)."""

    name: str  # events | items
    contract: tuple[str, ...]  # the contract's fields
    required: tuple[str, ...]  # columns a file in the contract's own shape must have
    optional: tuple[str, ...]  # mapped fields a row may lack
    ids: tuple[str, ...]  # read as text from CSV
    mapping_key: str  # the ingest section with the mapping

    def mapping(self, config: PreciseConfig) -> FieldMapping | ItemFieldMapping | None:
        return getattr(config.ingest, self.mapping_key)

    def topic(self, config: PreciseConfig) -> str:
        return config.kafka.events_topic if self.name == "events" else config.kafka.items_topic


EVENTS = Kind("events", EVENT_FIELDS, (*_REQUIRED, "event_id"), ("value", "event_id"), _ID_FIELDS, "field_mapping")
ITEMS = Kind("items", ITEM_FIELDS, ("item_id", "text", "created_ts"), ("scene", "created_ts"), ("item_id",),
             "item_field_mapping")


def _source_columns(mapping: FieldMapping | ItemFieldMapping | None, kind: Kind) -> dict[str, str]:
    """Contract field -> the top-level column it is read from."""
    if mapping is None:
        return {f: f for f in kind.contract}
    return {f: path.split(".", 1)[0] for f, path in mapping.fields.items()}


def check_columns(names: list[str], mapping: FieldMapping | ItemFieldMapping | None, source: Path,
                  kind: Kind = EVENTS) -> None:
    """Refuse, before anything is written, a file that lacks a column every row needs."""
    columns = _source_columns(mapping, kind)
    needed = kind.required if mapping is None else [f for f in mapping.fields if f not in kind.optional]
    for field in needed:
        path = mapping.fields[field] if mapping is not None else field
        if path in names or columns[field] in names:
            continue
        if mapping is not None:
            raise HistoryError(f"{source}: ingest.{kind.mapping_key}.fields.{field}: {path!r} is not a column of "
                               f"the file (columns: {names})")
        raise HistoryError(f"{source}: the file has no column {field!r} of the {kind.name[:-1]} contract (columns: "
                           f"{names}); a file in another schema needs ingest.{kind.mapping_key} "
                           f"(docs/bring-your-own.md)")
    template = getattr(mapping, "text_template", None)
    for _, name, _, _ in string.Formatter().parse(template or ""):
        if name is not None and name not in names and name.split(".", 1)[0] not in names:
            raise HistoryError(f"{source}: ingest.{kind.mapping_key}.text_template names {name!r}, which is not a "
                               f"column of the file (columns: {names})")


def _batches(path: Path, fmt: str, batch_rows: int, delimiter: str,
             mapping: FieldMapping | ItemFieldMapping | None, kind: Kind) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """(column names, record batches of about `batch_rows` rows, in file order)."""
    if fmt == "parquet":
        try:
            dataset = pads.dataset(str(path), format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise HistoryError(f"{path}: not a readable Parquet file ({exc})") from None
        return dataset.schema.names, dataset.to_batches(batch_size=batch_rows)
    # CSV: id columns as text, so `007` stays `007` and an id column with empty cells is not a float;
    # an empty cell is a missing value
    columns = _source_columns(mapping, kind)
    strings = {columns[f]: pa.string() for f in kind.ids if f in columns}
    try:
        reader = pacsv.open_csv(str(path), read_options=pacsv.ReadOptions(block_size=1 << 22),
                                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                convert_options=pacsv.ConvertOptions(column_types=strings, strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise HistoryError(f"{path}: not a readable CSV file ({exc})") from None
    return reader.schema.names, _rebatch(reader, batch_rows)


def _rebatch(batches: Any, rows: int) -> Iterator[pa.RecordBatch]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield from pa.Table.from_batches(pending).combine_chunks().to_batches()
            pending, count = [], 0
    if pending:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()


def _json_value(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def records(batch: pa.RecordBatch, topic: str, partition: int, first_offset: int, now_ms: int) -> pa.Table:
    """File rows as Kafka-shaped records (the input of `validate_records`): each row's value is the
    row as a JSON object, its offset its row number in the file."""
    values = [json.dumps(row, default=_json_value, separators=(",", ":")).encode() for row in batch.to_pylist()]
    n = len(values)
    return pa.table({"topic": pa.array([topic] * n, pa.string()),
                     "partition": pa.array([partition] * n, pa.int32()),
                     "offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
                     "timestamp": pa.array([now_ms] * n, pa.int64()),
                     "key": pa.array([None] * n, pa.binary()),
                     "value": pa.array(values, pa.binary())})


def _dead_letters(ingestor: Ingestor, topic: str, partition: int) -> int:
    """Dead letters the lake holds for one import partition (every row is an event / item or one)."""
    folder = f"{Layout(ingestor.storage).dead_letter}/topic={topic}"
    files = [f for f in ingestor.storage.list_files(folder) if f"/p{partition:04d}-" in f and f.endswith(".parquet")]
    return sum(pq.ParquetFile(f, filesystem=ingestor.storage.fs).metadata.num_rows for f in files)


def import_history(config: PreciseConfig, path: str | Path, *, name: str | None = None, fmt: str | None = None,
                   delimiter: str = ",", batch_rows: int = 200_000, kind: Kind = EVENTS) -> dict[str, Any]:
    """Import the events (or, `kind=ITEMS`, the catalogue items) of one Parquet or CSV file into the
    lake of `config` (see the module doc).

    Returns a summary: the import's name, partition, rows, events (items) and dead letters in the
    lake, and `already_imported` when the file's sha256 was imported before (nothing is written then)."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise HistoryError(f"{source}: no such file")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise HistoryError(f"batch_rows must be an int >= 1, got {batch_rows!r}")
    fmt = input_format(source, fmt)
    mapping = kind.mapping(config)
    names, batches = _batches(source, fmt, batch_rows, delimiter, mapping, kind)
    check_columns(names, mapping, source, kind)
    sha = file_sha256(source)
    started = time.monotonic()
    # the lake's dead-letter files are the record of an import's rejects (no topic copy: a broker
    # need not be up for an import)
    quiet = config.model_copy(deep=True)
    quiet.ingest.publish_dead_letters = False
    with Ingestor(quiet) as ingestor:
        topic = kind.topic(config)
        entry = next((e for e in ingestor.ledger.imports if _same(e, (sha, kind.name))), None)
        if entry is not None and entry.get("status") == "done":
            return {**_summary(entry), "already_imported": True, "seconds": round(time.monotonic() - started, 3)}
        if entry is None:
            entry = {"name": name or source.name, "kind": kind.name, "source": str(source), "sha256": sha,
                     "format": fmt, "partition": IMPORT_PARTITION_BASE + len(ingestor.ledger.imports),
                     "status": "running",
                     "started_at_ms": int(time.time() * 1000),
                     "field_mapping": None if mapping is None else mapping.model_dump(mode="json")}
            _save_entry(ingestor, entry)
        partition = int(entry["partition"])
        resume = ingestor.ledger.next_offset(topic, partition) or 0
        if resume:
            log.info("import %s: resuming after row %d", entry["name"], resume)
        options = ingestor.validation_options()
        row = 0
        for batch in batches:
            end = row + batch.num_rows
            if end > resume and batch.num_rows:
                if row < resume:
                    batch, row = batch.slice(resume - row), resume
                validated = validate_records(records(batch, topic, partition, row, int(time.time() * 1000)),
                                             **options)
                result = ingestor.commit_validated(validated, {(topic, partition): (row, end)})
                log.info("import %s: rows %d..%d, %d %s, %d dead letters", entry["name"], row, end,
                         result.events or result.items, kind.name, result.dead_letters)
            row = end
        dead = _dead_letters(ingestor, topic, partition)
        entry = {**entry, "status": "done", "rows": row, kind.name: row - dead, "dead_letters": dead,
                 "finished_at_ms": int(time.time() * 1000)}
        _save_entry(ingestor, entry)
    return {**_summary(entry), "already_imported": False, "seconds": round(time.monotonic() - started, 3)}


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "kind", "source", "sha256", "partition", "rows", entry.get("kind", "events"), "dead_letters")
    return {k: entry.get(k) for k in keys}


def _same(entry: dict[str, Any], key: tuple[str, str]) -> bool:
    return (entry.get("sha256"), entry.get("kind", "events")) == key


def _save_entry(ingestor: Ingestor, entry: dict[str, Any]) -> None:
    imports = list(ingestor.ledger.imports)
    key = (entry["sha256"], entry["kind"])
    at = next((i for i, e in enumerate(imports) if _same(e, key)), len(imports))
    imports[at:at + 1] = [entry]
    ingestor.commit_ledger(replace(ingestor.ledger, imports=imports))
