"""Request and response bodies of the HTTP API (DESIGN section 4), with their limits.

Requests are strict (a number sent as a string is an error, not coerced) and closed (an unknown
field is an error: a typo such as `exclude_sen` must not be silently ignored). The limits bound
the work one request can ask for; they appear in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from precise.events.schema import MAX_ID_CHARS, MAX_TEXT_CHARS

MAX_K = 1000
MAX_ITEM_IDS = 200
DEFAULT_K = 10

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
ItemIds = Annotated[list[Id], Field(min_length=1, max_length=MAX_ITEM_IDS)]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class UserQuery(Request):
    """A user, either by id (stored vector) or by a fresh item sequence, oldest first."""

    user_id: Id | None = Field(None, description="a user of the snapshot (or with recent live events)")
    item_ids: ItemIds | None = Field(None, description="a sequence of item ids, oldest first")

    @model_validator(mode="after")
    def _exactly_one(self) -> UserQuery:
        if (self.user_id is None) == (self.item_ids is None):
            raise ValueError("give exactly one of user_id or item_ids")
        return self


class ItemQuery(Request):
    """An item by id (stored vector), or by its text (a new, cold item; `item_id` optional)."""

    item_id: Id | None = None
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ItemQuery:
        if self.item_id is None and self.text is None:
            raise ValueError("give item_id, text, or both (text is used when the id is not in the snapshot)")
        return self


class RecallQuery(UserQuery):
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="how many items to return")
    exclude_seen: bool = Field(True, description="leave out the user's recent items (or the given item_ids)")


class Versioned(BaseModel):
    """Every answer names the snapshot and model version it was computed from."""

    task: str
    snapshot_version: str
    model_version: str


class VectorResponse(Versioned):
    vector: list[float]
    dim: int
    source: Literal["snapshot", "realtime", "text"] = Field(
        description="snapshot: stored; realtime: computed now from a sequence; text: from the item's text")
    user_id: str | None = None
    item_id: str | None = None
    ignored_item_ids: list[str] = Field(default_factory=list, description="ids unknown to the snapshot")
    user_vector_mode: Literal["snapshot", "realtime"] | None = Field(
        None, description="the replica's serve.user_vector_mode")
    live_events: int | None = Field(
        None, description="realtime mode, a user in the snapshot: live events since the snapshot the vector saw")


class Hit(BaseModel):
    item_id: str
    score: float
    seed_item_id: str | None = Field(None, description="U2I2I: the recent item this one is a neighbour of")


class RecallResponse(Versioned):
    items: list[Hit]
    k: int
    query: Literal["user_vector", "realtime", "sequence", "recent_items"] = Field(
        description="user_vector: the stored user vector; realtime: the snapshot's sequence tail of the "
                    "user plus their live events, embedded now; sequence: a vector computed from item ids; "
                    "recent_items: neighbours of recent items (U2I2I)")
    seeds: list[str] | None = None
    user_vector_mode: Literal["snapshot", "realtime"] | None = Field(
        None, description="the replica's serve.user_vector_mode")
    live_events: int | None = Field(
        None, description="realtime mode, a user in the snapshot: live events since the snapshot the vector saw")


class IndexDescription(BaseModel):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    recall_at_k: float | None = None
    recall_k: int | None = None


class VersionResponse(BaseModel):
    task: str
    snapshot_version: str | None
    model_version: str | None
    created_at: str | None = None
    num_items: int | None = None
    num_users: int | None = None
    dim: int | None = None
    index: IndexDescription | None = None
    loaded_at: float | None = None
    swaps: int = 0
    last_error: str | None = None
    recent_items: dict[str, Any] | None = None
    realtime: dict[str, Any] | None = None  # user_vector_mode and the real-time vector cache's counts


class HealthResponse(BaseModel):
    status: Literal["ok", "waiting"]
    snapshot_version: str | None = None
    detail: str | None = None


class ErrorResponse(BaseModel):
    error: str
    detail: list[Any] | None = None
