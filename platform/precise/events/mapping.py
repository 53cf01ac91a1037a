"""Your record schema -> the event / item contract (`ingest.field_mapping`, `ingest.item_field_mapping`),
before the contract's checks.

    mapping = FieldMapping(fields={"user_id": "user.id", "item_id": "movie", "ts": "when"},
                           constants={"scene": "movies", "action": "rate"}, timestamp="s")
    event_dict = map_event({"user": {"id": 7}, "movie": "m1", "when": 881250949}, mapping)
    parse_event(event_dict)  # the usual strict contract checks

The mapping only moves and converts what it is told to (a dotted path, a value table, the time
unit, integer ids to strings); everything else is the contract's job, so a mapped record is
accepted or rejected for the same reasons as a record sent in the contract's own shape. A record
that lacks a mapped field is rejected with a reason naming the contract field and your path.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
import time
from datetime import UTC, datetime
from typing import Any

from precise.config import EVENT_FIELDS, ITEM_FIELDS, FieldMapping, ItemFieldMapping
from precise.events.schema import InvalidEventError, json_object

_ID_FIELDS = ("event_id", "user_id", "item_id", "scene", "action")
_MISSING = object()


def lookup(record: dict[str, Any], path: str) -> Any:
    """The value at `path` (a top-level name, else a dotted path into nested objects), or _MISSING."""
    if path in record:
        return record[path]
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _event_time(value: Any, unit: str, path: str) -> Any:
    """Epoch ms from your `ts` as the mapping's `timestamp` says it is written; odd values pass
    through unchanged for the contract to reject with its own reason."""
    if unit == "iso":
        if not isinstance(value, str):
            raise InvalidEventError(f"ts: expected an ISO 8601 string at {path!r} (field_mapping.timestamp: iso), "
                                    f"got {type(value).__name__}")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEventError(f"ts: {value!r} at {path!r} is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(round(moment.timestamp() * 1000))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return value
    scaled = value * 1000 if unit == "s" else value
    if isinstance(scaled, float) and unit == "ms" and not scaled.is_integer():
        return value  # fractional milliseconds: not an epoch-ms integer, the contract says why
    return int(round(scaled))


def derived_event_id(event: dict[str, Any]) -> str:
    """A stable id from the mapped content: re-sent or re-imported copies of an event collide."""
    key = json.dumps([event.get(f) for f in ("user_id", "item_id", "scene", "action", "ts")], default=str)
    return "m-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def map_event(payload: Any, mapping: FieldMapping) -> dict[str, Any]:
    """Your record (JSON bytes or a dict) as a dict in the event contract's shape.

    Raises `InvalidEventError` for bytes that are not a JSON object and for a mapped field absent
    from the record (`user_id: Field required (mapped from 'user.id', absent in the record)`)."""
    record = json_object(payload)
    event, used = _pick(record, mapping.fields, optional=("value", "event_id"))  # event_id: derived below
    event.update(mapping.constants)
    for field, table in mapping.values.items():
        if field in event:
            value = event[field]
            key = value if isinstance(value, str) else str(value)
            if key in table:
                event[field] = table[key]
    if "ts" in event:
        event["ts"] = _event_time(event["ts"], mapping.timestamp, mapping.fields.get("ts", "ts"))
    if mapping.ids_as_strings:
        _ids_as_strings(event, _ID_FIELDS)
    if "event_id" not in event:
        event["event_id"] = derived_event_id(event)
    if mapping.keep_unmapped:
        _keep_unmapped(record, used, event, EVENT_FIELDS)
    return event


def _pick(record: dict[str, Any], fields: dict[str, str], optional: tuple[str, ...]
          ) -> tuple[dict[str, Any], set[str]]:
    """(contract field -> value, the top-level names read); a required field absent is an error."""
    out: dict[str, Any] = {}
    used: set[str] = set()
    for field, path in fields.items():
        value = lookup(record, path)
        used.add(path if path in record else path.split(".", 1)[0])
        if value is _MISSING or value is None:
            if field in optional:
                continue
            raise InvalidEventError(f"{field}: Field required (mapped from {path!r}, absent in the record)")
        out[field] = value
    return out, used


def _ids_as_strings(out: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        value = out.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            out[field] = str(value)
        elif isinstance(value, float) and value.is_integer():
            out[field] = str(int(value))  # CSV readers turn an id column with gaps into floats


def _keep_unmapped(record: dict[str, Any], used: set[str], out: dict[str, Any], contract: tuple[str, ...]) -> None:
    for name, value in record.items():
        if name not in used and name not in out and name not in contract:
            out[name] = value


def _template_text(record: dict[str, Any], template: str) -> str:
    """`template` with each `{name}` (a field name or dotted path) replaced by the record's value."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        value = lookup(record, name)
        if value is _MISSING or value is None:
            raise InvalidEventError(f"text: Field required (text_template names {name!r}, absent in the record)")
        parts.append(str(value))
    return "".join(parts).strip()


def map_item(payload: Any, mapping: ItemFieldMapping, now_ms: int | None = None) -> dict[str, Any]:
    """Your catalogue record (JSON bytes or a dict) as a dict in the item contract's shape; like
    `map_event`. Without a created_ts in the mapping, the item gets `now_ms` (default: the clock)."""
    record = json_object(payload)
    item, used = _pick(record, mapping.fields, optional=("scene",))
    item.update(mapping.constants)
    if mapping.text_template is not None:
        item["text"] = _template_text(record, mapping.text_template)
    if "created_ts" in item:
        item["created_ts"] = _event_time(item["created_ts"], mapping.timestamp, mapping.fields.get("created_ts", ""))
    else:
        item["created_ts"] = int(time.time() * 1000) if now_ms is None else now_ms
    if mapping.ids_as_strings:
        _ids_as_strings(item, ("item_id",))
    if mapping.keep_unmapped:
        _keep_unmapped(record, used, item, ITEM_FIELDS)
    return item
