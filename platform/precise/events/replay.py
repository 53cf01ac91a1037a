"""Stream a dataset into Kafka in event-time order, resumably and without duplicates.

Resuming: the replayer assigns partitions itself (the same murmur2 hash Kafka's default
partitioner uses on the user key). With an idempotent producer each partition receives a prefix
of its own share of the stream, even when the process is killed mid-batch. So on start we read
the last record of every partition, look up its position in the stream, and send only the later
events of that partition. Items go to `item-catalog` before the first event that needs them; the
items already there are read back first, so a resumed run re-sends none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

from precise.config import KafkaConfig
from precise.data.movielens import EventDataset
from precise.events.producer import EventProducer, partition_for
from precise.events.topics import ensure_topics

CHUNK = 5_000  # events between flushes: items of a chunk are flushed before its events
LOOKBACK = 2_000  # records read per step when searching a partition backwards


@dataclass
class ReplayResult:
    dataset: str
    events_total: int
    events_sent: int
    events_already_in_kafka: int
    items_sent: int
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        return self.events_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _last_positions(config: KafkaConfig, topic: str, position_of: dict[str, int]) -> dict[int, int]:
    """Per partition, the stream position of the last event of this dataset already in Kafka."""
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=5_000, **config.client_options)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        begins, ends = consumer.beginning_offsets(parts), consumer.end_offsets(parts)
        last: dict[int, int] = {}
        for tp in parts:
            last[tp.partition] = -1
            hi = ends[tp]
            while hi > begins[tp] and last[tp.partition] < 0:  # walk back past foreign records
                lo = max(begins[tp], hi - LOOKBACK)
                consumer.assign([tp])
                consumer.seek(tp, lo)
                seen = -1
                while True:
                    batch = consumer.poll(timeout_ms=2_000, max_records=LOOKBACK)
                    records = batch.get(tp, [])
                    for rec in records:
                        if rec.offset < hi:
                            event_id = json.loads(rec.value).get("event_id")
                            seen = max(seen, position_of.get(event_id, -1))
                    if not records or records[-1].offset >= hi - 1:
                        break
                last[tp.partition] = seen
                hi = lo
        return last
    finally:
        consumer.close()


def _items_present(config: KafkaConfig) -> set[str]:
    """Item ids already in the (compacted) catalogue topic."""
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap_servers, enable_auto_commit=False,
                             **config.client_options)
    try:
        parts = [TopicPartition(config.items_topic, p)
                 for p in sorted(consumer.partitions_for_topic(config.items_topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        present: set[str] = set()
        remaining = {tp for tp in parts if ends[tp] > consumer.position(tp)}
        while remaining:
            for tp, records in consumer.poll(timeout_ms=2_000).items():
                present.update(r.key.decode() for r in records if r.key is not None)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return present
    finally:
        consumer.close()


def replay(dataset: EventDataset, config: KafkaConfig, speed: float | None = None,
           progress: bool = True, on_chunk: Callable[[int], None] | None = None) -> ReplayResult:
    """Send `dataset` to Kafka (events in event-time order, items first); resume if interrupted.

    `speed` is event-time seconds per wall second (None: as fast as possible).
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be > 0 event-time seconds per wall second, got {speed}")
    start = time.monotonic()
    partitions = ensure_topics(config)
    n_event_parts = partitions[config.events_topic]
    n_item_parts = partitions[config.items_topic]
    events = dataset.events
    position_of = dict(zip(events["event_id"].tolist(), range(len(events)), strict=True))
    if len(position_of) != len(events):
        raise ValueError(f"dataset {dataset.name} has duplicate event ids")

    users = events["user_id"].to_numpy()
    user_part = {u: partition_for(u, n_event_parts) for u in np.unique(users)}
    part = np.fromiter((user_part[u] for u in users), dtype=np.int32, count=len(users))
    last = _last_positions(config, config.events_topic, position_of)
    done_before = np.array([last.get(p, -1) for p in range(n_event_parts)])
    todo = np.flatnonzero(np.arange(len(events)) > done_before[part])

    present = _items_present(config)
    item_rows = {row.item_id: row for row in dataset.items.itertuples(index=False)}
    columns = [events[c].to_numpy() for c in ("event_id", "user_id", "item_id", "scene", "action", "ts", "value")]

    sent_items = 0
    bar = tqdm(total=len(todo), desc=f"replay {dataset.name}", unit="ev", disable=not progress,
               mininterval=1.0)
    t0_wall = time.monotonic()
    t0_event = int(columns[5][todo[0]]) if len(todo) else 0
    with EventProducer(config) as producer:
        for lo in range(0, len(todo), CHUNK):
            chunk = todo[lo:lo + CHUNK]
            new_items = [i for i in dict.fromkeys(columns[2][chunk].tolist()) if i not in present]
            for item_id in new_items:
                row = item_rows.get(item_id)
                if row is None:
                    raise ValueError(f"event references item {item_id!r} missing from the catalogue")
                producer.send_item({"item_id": row.item_id, "text": row.text, "scene": row.scene,
                                    "created_ts": int(row.created_ts)},
                                   partition=partition_for(item_id, n_item_parts))
                present.add(item_id)
            if new_items:
                producer.flush()  # an item is durable before any event that refers to it
                sent_items += len(new_items)
            for k in chunk:
                if speed is not None:
                    due = t0_wall + (int(columns[5][k]) - t0_event) / 1000.0 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        producer.flush()
                        time.sleep(delay)
                event = {"event_id": columns[0][k], "user_id": columns[1][k], "item_id": columns[2][k],
                         "scene": columns[3][k], "action": columns[4][k], "ts": int(columns[5][k])}
                value = columns[6][k]
                if value == value:  # not NaN
                    event["value"] = float(value)
                producer.send_event(event, partition=int(part[k]))
            bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(lo + len(chunk))
        producer.flush()
    bar.close()
    return ReplayResult(dataset=dataset.name, events_total=len(events), events_sent=len(todo),
                        events_already_in_kafka=len(events) - len(todo), items_sent=sent_items,
                        elapsed_s=time.monotonic() - start)
