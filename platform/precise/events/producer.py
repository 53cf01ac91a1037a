"""A validating producer: nothing that breaks the contract ever reaches the topics.

Events are keyed by user (so one user's events stay ordered in one partition) and items by item
id (the catalogue topic is compacted on that key). Idempotence and acks=all make broker-side
retries duplicate-free; `send_*` validates first and raises `InvalidEventError` without sending.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from precise.config import KafkaConfig
from precise.events.schema import BehaviorEvent, Item, parse_event, parse_item


def partition_for(key: str, num_partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (murmur2, as the Java client)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % num_partitions


class EventProducer:
    def __init__(self, config: KafkaConfig, **producer_options: Any) -> None:
        self.config = config
        self.allowed_actions = tuple(config.allowed_actions)
        options = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 20,
            "batch_size": 256 * 1024,
            "max_in_flight_requests_per_connection": 5,
            **config.client_options,
            **producer_options,
        }
        self._producer = KafkaProducer(bootstrap_servers=config.bootstrap_servers, **options)

    def send_event(self, event: BehaviorEvent | dict[str, Any] | bytes, partition: int | None = None) -> Any:
        """Validate and send one behaviour event; returns the send future."""
        event = parse_event(event, self.allowed_actions)
        return self._producer.send(self.config.events_topic, key=event.user_id.encode(),
                                   value=event.to_json_bytes(), partition=partition)

    def send_item(self, item: Item | dict[str, Any] | bytes, partition: int | None = None) -> Any:
        """Validate and send one catalogue item; returns the send future."""
        item = parse_item(item)
        return self._producer.send(self.config.items_topic, key=item.item_id.encode(),
                                   value=item.to_json_bytes(), partition=partition)

    def delete_item(self, item_id: str) -> Any:
        """Delete a catalogue item: a tombstone (the item's key, no value) on the compacted topic."""
        if not item_id:
            raise ValueError("item_id must not be empty")
        return self._producer.send(self.config.items_topic, key=item_id.encode(), value=None)

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        """Send bytes unvalidated: only for dead-letter records and for tests of bad input."""
        return self._producer.send(topic, key=key, value=value)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float | None = 30) -> None:
        self._producer.close(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
