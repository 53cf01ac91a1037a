"""Turn raw Kafka records into validated rows or rejects with a reason (runs inside Ray Data tasks).

`validate_records` is the `map_batches` function of the ingest pipeline: it receives a block of
records as `ray.data.read_kafka` returns them and gives back one row per record, either the parsed
event / item or a reason why it was rejected (with the raw bytes, for the dead-letter sink). It
never raises on a record. Duplicate event ids need the whole batch and the lake, so the driver
finds those (precise.ingest.batch).

Two paths, one result: canonical event records are accepted in columnar form (Arrow's JSON reader
and `pyarrow.compute` checks, `_fast_events`); every other record, and every reject, goes through
`validate_records_per_record` (pydantic, one record at a time), the reference the fast path is
tested against row for row (tests/test_validate_fast.py). docs/performance.md has the profile.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from precise.config import FieldMapping, ItemFieldMapping
from precise.events.mapping import map_event, map_item
from precise.events.schema import MAX_ID_CHARS, BehaviorEvent, InvalidEventError, parse_event, parse_item

VALIDATED_SCHEMA = pa.schema([
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("kafka_ts", pa.int64()),
    ("key", pa.binary()),
    ("raw", pa.binary()),  # the record's value bytes
    ("reason", pa.string()),  # null: valid
    ("reason_kind", pa.string()),
    ("event_id", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("scene", pa.string()),
    ("action", pa.string()),
    ("ts", pa.int64()),
    ("value", pa.float64()),
    ("text", pa.string()),
    ("created_ts", pa.int64()),
    ("deleted", pa.bool_()),
    ("extra", pa.string()),
])

# Reason kinds: a closed vocabulary, used as a metric tag (bounded cardinality) and for triage.
REASON_KINDS = (
    "oversized", "empty", "not_utf8", "invalid_json", "not_object", "missing_field", "wrong_type",
    "empty_id", "null_bytes", "invalid_timestamp", "action_not_allowed", "invalid_field",
    "duplicate_event_id",
)
_FIELDS = ("event_id", "user_id", "item_id", "scene", "action", "ts", "value", "text", "created_ts",
           "deleted", "extra")


def reason_kind(reason: str) -> str:
    """Classify a rejection reason (as written by precise.events.schema) into REASON_KINDS."""
    if reason.startswith("payload of"):
        return "oversized"
    if reason.startswith("empty record"):
        return "empty"
    if reason.startswith("not UTF-8"):
        return "not_utf8"
    if reason.startswith("invalid JSON"):
        return "invalid_json"
    if reason.startswith("expected a JSON object"):
        return "not_object"
    if reason.startswith("action:") and "is not one of" in reason:
        return "action_not_allowed"
    if reason.startswith("duplicate event_id"):
        return "duplicate_event_id"
    if "Field required" in reason:
        return "missing_field"
    if "null bytes" in reason:
        return "null_bytes"
    if "non-empty" in reason:
        return "empty_id"
    if "Input should be" in reason:
        return "wrong_type"
    if reason.startswith(("ts:", "created_ts:")):
        return "invalid_timestamp"
    return "invalid_field"


def _extra(model: Any) -> str | None:
    extra = model.model_extra
    return json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else None


def parse_event_fast(raw: bytes, allowed_actions: tuple[str, ...], context: dict[str, Any] | None = None
                     ) -> BehaviorEvent:
    """`parse_event`, with pydantic's JSON parser tried first (about twice as fast).

    Anything the fast path refuses goes through `parse_event`, so the accepted events and every
    rejection reason are exactly `parse_event`'s.
    """
    try:
        event = BehaviorEvent.model_validate_json(raw, context=context)
    except (ValidationError, ValueError):
        return parse_event(raw, allowed_actions, context)
    if event.action not in allowed_actions:
        return parse_event(raw, allowed_actions, context)  # raises with the canonical reason
    return event


def validate_records_per_record(batch: pa.Table, *, events_topic: str, items_topic: str,
                                allowed_actions: tuple[str, ...], max_payload_bytes: int,
                                max_event_time_ahead_s: float = 86_400.0, field_mapping: FieldMapping | None = None,
                                item_field_mapping: ItemFieldMapping | None = None) -> pa.Table:
    """The per-record reference path of `validate_records` (same arguments, same output).

    Every record goes through pydantic one at a time: `validate_records` sends here whatever its
    columnar fast path cannot decide, and the differential test compares the two row for row.
    `field_mapping` (ingest.field_mapping) turns each event record of your schema into the
    contract's shape first (precise.events.mapping); the contract's checks follow unchanged.
    `item_field_mapping` does the same for the item records.

    Event time may be up to `max_event_time_ahead_s` ahead of the later of this worker's clock and
    the record's Kafka timestamp: a worker with a slow clock does not reject a broker-stamped event.
    """
    columns: dict[str, list[Any]] = {name: [] for name in VALIDATED_SCHEMA.names}
    topics = batch.column("topic").to_pylist()
    keys = batch.column("key").to_pylist()
    values = batch.column("value").to_pylist()
    columns["partition"] = batch.column("partition").to_pylist()
    columns["offset"] = batch.column("offset").to_pylist()
    columns["kafka_ts"] = batch.column("timestamp").to_pylist()
    columns["topic"] = topics
    columns["key"] = keys
    columns["raw"] = values
    fields = {name: columns[name] for name in _FIELDS}
    ahead_ms = max_event_time_ahead_s * 1000
    for topic, key, raw, kafka_ts in zip(topics, keys, values, columns["kafka_ts"], strict=True):
        row: dict[str, Any] = {}
        reason = None
        try:
            if raw is not None and len(raw) > max_payload_bytes:
                raise InvalidEventError(f"payload of {len(raw)} bytes exceeds the limit of {max_payload_bytes}")
            if topic == events_topic:
                if raw is None:
                    raise InvalidEventError("empty record: an event needs a JSON value")
                context = {"now_ms": kafka_ts, "max_ahead_ms": ahead_ms}
                event = (parse_event_fast(raw, allowed_actions, context) if field_mapping is None
                         else parse_event(map_event(raw, field_mapping), allowed_actions, context))
                row = {"event_id": event.event_id, "user_id": event.user_id, "item_id": event.item_id,
                       "scene": event.scene, "action": event.action, "ts": event.ts, "value": event.value,
                       "extra": _extra(event)}
            elif topic == items_topic:
                if raw is None:  # a tombstone on the compacted topic: the item was deleted
                    item_id = key.decode("utf-8", "replace") if key else ""
                    if not item_id.strip():
                        raise InvalidEventError("empty record: a tombstone needs the item id as its key")
                    row = {"item_id": item_id, "deleted": True}
                else:
                    mapped = raw if item_field_mapping is None else map_item(raw, item_field_mapping, kafka_ts)
                    item = parse_item(mapped)
                    row = {"item_id": item.item_id, "text": item.text, "scene": item.scene,
                           "created_ts": item.created_ts, "deleted": False, "extra": _extra(item)}
            else:
                raise InvalidEventError(f"record from unexpected topic {topic!r}")
        except InvalidEventError as exc:
            reason = exc.reason
        except Exception as exc:  # a record must never fail the batch: dead-letter what we cannot parse
            reason = f"unparseable record: {type(exc).__name__}: {exc}"
        columns["reason"].append(reason)
        columns["reason_kind"].append(None if reason is None else reason_kind(reason))
        for name, column in fields.items():
            column.append(row.get(name))
    return pa.Table.from_pydict(columns, schema=VALIDATED_SCHEMA)


# ---- the columnar fast path -----------------------------------------------------------------------
#
# Most event records are the producer's own canonical JSON: one flat object of the contract's fields.
# Those are parsed for a whole block at once by Arrow's JSON reader into typed columns and checked
# with vectorised compute functions; no Python object is built per record. The fast path only ever
# *accepts*: a record it is not certain about (any doubt: an escape, an extra field, a reject, a
# value near a limit) goes through `validate_records_per_record`, so every reject keeps exactly the
# reason and reason_kind of the per-record path, and every accepted row holds the same values.

_ID_FIELDS = ("event_id", "user_id", "item_id", "scene", "action")
_FAST_SCHEMA = pa.schema([*((name, pa.string()) for name in _ID_FIELDS), ("ts", pa.int64()),
                          ("value", pa.float64())])
# With no backslash in a record every string token is delimited by exactly two quotes, so the quote
# count says how many keys and string values it has: 5 string values, 6 keys (+ 1 with "value").
# One more key of any kind (an extra field, a duplicate) changes the count.
_QUOTES_WITHOUT_VALUE = 2 * (6 + 5)
_QUOTES_WITH_VALUE = 2 * (7 + 5)
# `str.strip()` removes what Python calls whitespace: an id made only of these is "empty".
_ALL_WHITESPACE = "^[" + "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace()) + "]*$"
# Event time this close to the limit is left to the per-record path (its clock reads later; float
# rounding of the threshold cannot matter).
_TS_MARGIN_MS = 1_000.0
_MIN_CHUNK = 8  # a parse error splits the records in halves down to this size, then they go the slow way


def _parse_json_lines(values: pa.Array) -> pa.Table | None:
    """Arrow's JSON reader over newline-joined records (none holds a newline); None if it refused."""
    import pyarrow.json as pajson

    buf = b"\n".join(values.to_pylist())
    try:
        table = pajson.read_json(pa.BufferReader(buf),
                                 read_options=pajson.ReadOptions(use_threads=False, block_size=len(buf) + 1),
                                 parse_options=pajson.ParseOptions(explicit_schema=_FAST_SCHEMA,
                                                                   unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    # two objects on one line would make two rows: only a one-to-one result is trusted
    return table if table.num_rows == len(values) else None


def _parse_chunks(values: pa.Array, index: np.ndarray) -> list[tuple[np.ndarray, pa.Table]]:
    """Parse `values` (rows `index` of the block); a refused chunk is split until it is small."""
    table = _parse_json_lines(values)
    if table is not None:
        return [(index, table.combine_chunks())]
    if len(values) <= _MIN_CHUNK:
        return []
    half = len(values) // 2
    return (_parse_chunks(values.slice(0, half), index[:half])
            + _parse_chunks(values.slice(half), index[half:]))


def _utf8_rows(values: pa.Array) -> np.ndarray:
    """Which records are valid UTF-8 (checked by Arrow for the whole block; per record only if not)."""
    try:
        values.cast(pa.string())  # validates
        return np.ones(len(values), dtype=bool)
    except pa.ArrowInvalid:
        pass

    def valid(raw: bytes) -> bool:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    return np.array([valid(raw) for raw in values.to_pylist()], dtype=bool)


def _fast_events(values: pa.Array, kafka_ts: pa.Array, candidates: np.ndarray, allowed_actions: tuple[str, ...],
                 ahead_ms: float) -> tuple[np.ndarray, pa.Table]:
    """The records among `candidates` (event records within the size limit) the fast path accepts.

    Returns their row numbers in the block and their `_FAST_SCHEMA` columns, in the same order.
    """
    empty = (np.zeros(0, dtype=np.int64), _FAST_SCHEMA.empty_table())
    index = np.flatnonzero(candidates)
    if not len(index):
        return empty
    raw = values if len(index) == len(values) else values.take(pa.array(index))
    quotes = pc.count_substring(raw, '"')
    shape = pc.and_(pc.and_(pc.starts_with(raw, "{"), pc.ends_with(raw, "}")),
                    pc.and_(pc.invert(pc.match_substring_regex(raw, r"[\x00-\x1f\\]")),
                            pc.is_in(quotes, pa.array([_QUOTES_WITHOUT_VALUE, _QUOTES_WITH_VALUE]))))
    keep = pc.fill_null(shape, False).to_numpy(zero_copy_only=False)
    keep[keep] &= _utf8_rows(raw.filter(pa.array(keep)))
    index, raw, quotes = index[keep], raw.filter(pa.array(keep)), quotes.filter(pa.array(keep))
    if not len(index):
        return empty
    parsed = _parse_chunks(raw, np.arange(len(index)))
    if not parsed:
        return empty
    local = np.concatenate([i for i, _ in parsed])
    table = pa.concat_tables([t for _, t in parsed]).combine_chunks()
    columns = {name: table.column(name).combine_chunks() for name in _FAST_SCHEMA.names}
    index, quotes = index[local], quotes.take(pa.array(local))
    ok = pc.is_valid(columns["ts"])
    for name in _ID_FIELDS:
        column = columns[name]
        ok = pc.and_(ok, pc.and_(pc.is_valid(column), pc.less_equal(pc.utf8_length(column), MAX_ID_CHARS)))
        # not only whitespace: at once if it starts with a printable ASCII character, else by regex
        first = pc.utf8_slice_codeunits(column, 0, 1)
        printable = pc.fill_null(pc.and_(pc.greater(first, " "), pc.less(first, "\x7f")), False)
        if not pc.all(printable).as_py():
            blank = pc.match_substring_regex(column.filter(pc.invert(printable)), _ALL_WHITESPACE)
            printable = pc.replace_with_mask(printable, pc.invert(printable), pc.invert(blank))
        ok = pc.and_(ok, printable)
    ok = pc.and_(ok, pc.is_in(columns["action"], pa.array(list(allowed_actions), pa.string())))
    # _check_ts: 0 < ts <= max(clock, Kafka timestamp) + allowance
    now_ms = time.time() * 1000
    kafka_ms = pc.cast(pc.fill_null(kafka_ts.take(pa.array(index)), 0), pa.float64(), safe=False)
    reference = pc.max_element_wise(kafka_ms, now_ms)
    ts = columns["ts"]
    ts_ms = pc.add(pc.cast(ts, pa.float64(), safe=False), _TS_MARGIN_MS)
    ok = pc.and_(ok, pc.and_(pc.greater(ts, 0), pc.less_equal(ts_ms, pc.add(reference, ahead_ms))))
    value = columns["value"]
    has_value = pc.is_valid(value)
    # NaN and infinities are left to pydantic; an absent value must come with no "value" key at all
    ok = pc.and_(ok, pc.if_else(has_value, pc.and_(pc.is_finite(value), pc.equal(quotes, _QUOTES_WITH_VALUE)),
                                pc.equal(quotes, _QUOTES_WITHOUT_VALUE)))
    ok = pc.fill_null(ok, False)
    accepted = ok.to_numpy(zero_copy_only=False)
    order = np.argsort(index[accepted], kind="stable")
    return index[accepted][order], table.filter(ok).take(pa.array(order))


def validate_records(batch: pa.Table, *, events_topic: str, items_topic: str, allowed_actions: tuple[str, ...],
                     max_payload_bytes: int, max_event_time_ahead_s: float = 86_400.0,
                     field_mapping: FieldMapping | None = None,
                     item_field_mapping: ItemFieldMapping | None = None) -> pa.Table:
    """Validate one block of Kafka records (the `map_batches` function); see VALIDATED_SCHEMA.

    `field_mapping` (ingest.field_mapping) turns each event record of your schema into the
    contract's shape first (precise.events.mapping); the contract's checks follow unchanged.
    `item_field_mapping` does the same for the item records.

    Event time may be up to `max_event_time_ahead_s` ahead of the later of this worker's clock and
    the record's Kafka timestamp: a worker with a slow clock does not reject a broker-stamped event.

    Canonical event records are accepted in columnar form (`_fast_events`); everything else (items,
    mapped events, anything doubtful, every reject) goes through `validate_records_per_record`,
    and the result is exactly that function's, row for row.
    """
    options: dict[str, Any] = {
        "events_topic": events_topic, "items_topic": items_topic, "allowed_actions": allowed_actions,
        "max_payload_bytes": max_payload_bytes, "max_event_time_ahead_s": max_event_time_ahead_s,
        "field_mapping": field_mapping, "item_field_mapping": item_field_mapping}
    if batch.num_rows == 0 or field_mapping is not None:
        return validate_records_per_record(batch, **options)
    batch = batch.combine_chunks()
    values = batch.column("value").chunk(0) if batch.column("value").num_chunks else pa.array([], pa.binary())
    candidates = pc.and_(pc.equal(batch.column("topic"), events_topic),
                         pc.less_equal(pc.binary_length(values), max_payload_bytes))
    candidates = pc.fill_null(candidates, False).to_numpy(zero_copy_only=False)
    fast_index, fast = _fast_events(values, batch.column("timestamp").combine_chunks(), candidates, allowed_actions,
                                    max_event_time_ahead_s * 1000)
    if not len(fast_index):
        return validate_records_per_record(batch, **options)
    slow_mask = np.ones(batch.num_rows, dtype=bool)
    slow_mask[fast_index] = False
    slow_index = np.flatnonzero(slow_mask)
    records = batch.take(pa.array(fast_index))
    n = len(fast_index)
    none = {name: pa.nulls(n, VALIDATED_SCHEMA.field(name).type)
            for name in ("reason", "reason_kind", "text", "created_ts", "deleted", "extra")}
    accepted = pa.table({
        "topic": records.column("topic"), "partition": records.column("partition"),
        "offset": records.column("offset"), "kafka_ts": records.column("timestamp"),
        "key": records.column("key"), "raw": records.column("value"),
        **{name: fast.column(name) for name in _FAST_SCHEMA.names}, **none,
    }).select(VALIDATED_SCHEMA.names).cast(VALIDATED_SCHEMA)
    if not len(slow_index):
        return accepted
    rest = validate_records_per_record(batch.take(pa.array(slow_index)), **options)
    order = np.argsort(np.concatenate([fast_index, slow_index]), kind="stable")
    return pa.concat_tables([accepted, rest]).take(pa.array(order)).combine_chunks()
