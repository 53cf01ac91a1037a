"""Event contracts (DESIGN section 4), Kafka topics and the validating producer."""

from precise.events.schema import (
    DEFAULT_ACTIONS,
    BehaviorEvent,
    InvalidEventError,
    Item,
    parse_event,
    parse_item,
)

__all__ = [
    "DEFAULT_ACTIONS",
    "BehaviorEvent",
    "InvalidEventError",
    "Item",
    "parse_event",
    "parse_item",
]
