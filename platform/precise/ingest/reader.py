"""Read one Kafka partition range up to the last *delivered* offset (runs in a Ray task).

`ray.data.read_kafka` stops only at the requested end offset or its timeout. With transactional
producers (Flink, Kafka Streams, Debezium) the last offset of a partition is often a commit or abort
marker, which no consumer ever receives, and aborted records are filtered out by
`isolation.level=read_committed`: such a read waits for an offset that will never come, the whole
timeout, every batch. This reader stops at the partition's end as the broker sees it (librdkafka's
PARTITION_EOF, which is the last stable offset under read_committed) and reports how far its
position got, so the batch covers markers and aborted records too and the next batch starts after
them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

RAW_SCHEMA = pa.schema([
    ("offset", pa.int64()),
    ("key", pa.binary()),
    ("value", pa.binary()),
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("timestamp", pa.int64()),
])


def read_partition(bootstrap_servers: str, options: dict[str, Any], topic: str, partition: int, start: int,
                   end: int, timeout_s: float) -> tuple[pa.Table, int]:
    """Committed records of `topic[partition]` in [start, end), and the offset the read covered.

    The covered end is the consumer's position when it stopped: past the last record, and past any
    transaction markers and aborted records behind it; it is `end` when the range was read to its
    end, less when the partition's stable end (an open transaction) or the timeout came first.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "precise-ingest-read",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         **options, "isolation.level": "read_committed"})
    rows: dict[str, list[Any]] = {name: [] for name in RAW_SCHEMA.names}
    position = start
    at_eof = False
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        while position < end and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=min(end - position, 10_000),
                                    timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            at_eof = False
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof = True
                        position = max(position, min(end, msg.offset()))
                        continue
                    raise KafkaException(err)
                offset = msg.offset()
                if offset >= end:
                    position = end
                    break
                rows["offset"].append(offset)
                rows["key"].append(msg.key())
                rows["value"].append(msg.value())
                rows["topic"].append(msg.topic())
                rows["partition"].append(msg.partition())
                rows["timestamp"].append(msg.timestamp()[1])
                position = max(position, offset + 1)
            if at_eof:
                # the stable end: markers and aborted records below it are skipped by the client
                (current,) = consumer.position([TopicPartition(topic, partition)])
                if current.offset >= 0:
                    position = max(position, min(end, current.offset))
                break
        if position < end and not at_eof:
            log.warning("%s[%d]: read timed out after %.0f s at offset %d of %d..%d; the batch covers what "
                        "was read", topic, partition, timeout_s, position, start, end)
    finally:
        consumer.close()
    return pa.Table.from_pydict(rows, schema=RAW_SCHEMA), position
