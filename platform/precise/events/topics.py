"""Create the platform's topics (idempotently) and read partition ends."""

from __future__ import annotations

from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from precise.config import KafkaConfig


def ensure_topics(config: KafkaConfig, timeout_s: float = 30.0) -> dict[str, int]:
    """Create events, items (compacted) and dead-letter topics if missing; return partition counts."""
    wanted = {
        config.events_topic: (config.partitions, {}),
        config.items_topic: (config.partitions, {"cleanup.policy": "compact"}),
        config.dead_letter_topic: (1, {}),
    }
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers,
                             request_timeout_ms=int(timeout_s * 1000), **config.client_options)
    try:
        existing = set(admin.list_topics())
        # -1: the broker's default.replication.factor (CreateTopics v4+)
        replication = config.replication_factor if config.replication_factor is not None else -1
        new = [NewTopic(name, num_partitions=parts, replication_factor=replication, topic_configs=cfg)
               for name, (parts, cfg) in wanted.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # created concurrently: fine
    finally:
        admin.close()
    return partition_counts(config, list(wanted))


def partition_counts(config: KafkaConfig, topics: list[str]) -> dict[str, int]:
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap_servers, **config.client_options)
    try:
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in topics}
    finally:
        consumer.close()


def end_offsets(bootstrap_servers: str, topic: str, client_options: dict[str, Any] | None = None
                ) -> dict[int, int]:
    """Next offset to be written, per partition of `topic`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, **(client_options or {}))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def read_topic(bootstrap_servers: str, topic: str, client_options: dict[str, Any] | None = None,
               timeout_s: float = 120.0) -> list[Any]:
    """Every record of `topic` from the beginning to the current end (for tools and tests)."""
    import time

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                             **(client_options or {}))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list[Any] = []
        remaining = {tp for tp in parts if ends[tp] > consumer.position(tp)}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(records)} records after {timeout_s} s")
            for tp, batch in consumer.poll(timeout_ms=1_000, max_records=10_000).items():
                records.extend(r for r in batch if r.offset < ends[tp])
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        consumer.close()
