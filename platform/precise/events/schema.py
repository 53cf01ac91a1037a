"""Typed, validated behaviour events and catalogue items (DESIGN section 4).

Both models are strict: a wrong type is an error, never a silent coercion (a user id sent as a
number, a timestamp sent as a string). Unknown extra fields of an event are kept, as the contract
says. `parse_event` / `parse_item` turn raw Kafka bytes into a model or raise `InvalidEventError`
with a reason that names the field, which is what the producer and the dead-letter sink report.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Event time is epoch milliseconds. Anything before 1970 or more than this far ahead of the wall
# clock is a producer bug (seconds instead of ms, a garbage clock), not a behaviour.
MAX_FUTURE_MS = 24 * 3600 * 1000
DEFAULT_ACTIONS: tuple[str, ...] = ("rate", "like", "click", "view", "share", "purchase")
MAX_ID_CHARS = 512
MAX_TEXT_CHARS = 16_384


class InvalidEventError(ValueError):
    """A record that breaks the contract; `reason` says which field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_id(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"{field} must be a non-empty string")
    if "\x00" in value:
        raise ValueError(f"{field} must not contain null bytes")
    return value


def _check_ts(value: int, context: Any = None) -> int:
    """`context` (pydantic's validation context) may carry `now_ms` (the reference clock, e.g. the
    later of the worker's clock and the broker's record timestamp) and `max_ahead_ms` (the allowed
    skew, `ingest.max_event_time_ahead_s`)."""
    if value <= 0:
        raise ValueError("must be epoch milliseconds > 0")
    context = context or {}
    now_ms = max(time.time() * 1000, context.get("now_ms") or 0)
    ahead_ms = context.get("max_ahead_ms", MAX_FUTURE_MS)
    if value > now_ms + ahead_ms:
        raise ValueError(f"is in the future: more than {ahead_ms / 3_600_000:g} h ahead of the clock "
                         f"(epoch milliseconds expected; allowance: ingest.max_event_time_ahead_s)")
    return value


class BehaviorEvent(BaseModel):
    """One user action on one item, in one scene, at event time `ts` (epoch ms)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    event_id: str = Field(max_length=MAX_ID_CHARS)
    user_id: str = Field(max_length=MAX_ID_CHARS)
    item_id: str = Field(max_length=MAX_ID_CHARS)
    scene: str = Field(max_length=MAX_ID_CHARS)
    action: str = Field(max_length=MAX_ID_CHARS)
    ts: int
    value: float | None = None

    @field_validator("event_id", "user_id", "item_id", "scene", "action")
    @classmethod
    def _non_empty(cls, value: str, info: Any) -> str:
        return _check_id(value, info.field_name)

    @field_validator("ts")
    @classmethod
    def _event_time(cls, value: int, info: Any) -> int:
        return _check_ts(value, info.context)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Item(BaseModel):
    """A catalogue entry: its id and the text that describes it (title, categories, ...)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    item_id: str = Field(max_length=MAX_ID_CHARS)
    text: str = Field(max_length=MAX_TEXT_CHARS)
    scene: str | None = None
    created_ts: int

    @field_validator("item_id", "text")
    @classmethod
    def _non_empty(cls, value: str, info: Any) -> str:
        return _check_id(value, info.field_name)

    @field_validator("created_ts")
    @classmethod
    def _created(cls, value: int) -> int:
        return _check_ts(value)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def _reason(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def json_object(payload: Any) -> dict[str, Any]:
    """Raw bytes (UTF-8 JSON) or a dict -> the dict; `InvalidEventError` naming what is wrong."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEventError(f"not UTF-8: {exc}") from None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidEventError(f"invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidEventError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


def _build(model: type[BaseModel], payload: Any, context: dict[str, Any] | None = None) -> Any:
    if isinstance(payload, model):
        return payload
    payload = json_object(payload)
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        raise InvalidEventError(_reason(exc)) from None


def parse_event(payload: Any, allowed_actions: tuple[str, ...] | None = DEFAULT_ACTIONS,
                context: dict[str, Any] | None = None) -> BehaviorEvent:
    """Validate raw bytes, a dict, or an event; raise `InvalidEventError` on any breach.

    `context`: the event-time reference (see `_check_ts`)."""
    event = _build(BehaviorEvent, payload, context)
    if allowed_actions is not None and event.action not in allowed_actions:
        raise InvalidEventError(f"action: {event.action!r} is not one of {list(allowed_actions)}")
    return event


def parse_item(payload: Any) -> Item:
    """Validate raw bytes, a dict, or an item; raise `InvalidEventError` on any breach."""
    return _build(Item, payload)
