"""Replay throughput vs a bare producer loop on the same events, same broker, same run.

    python benchmarks/replay.py [--quick]      # --quick: ML-100k (else ML-1M)

The replayer validates every event against the contract, assigns partitions, keeps items ahead
of events and tracks progress; the baseline is kafka-python's `send` of pre-serialised bytes with
the same producer settings. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka import KafkaProducer  # noqa: E402

from _stack import kafka_bootstrap  # noqa: E402
from precise.config import KafkaConfig  # noqa: E402
from precise.data import load_movielens  # noqa: E402
from precise.events.replay import replay  # noqa: E402
from precise.events.topics import ensure_topics  # noqa: E402


def bare_producer(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             linger_ms=20, batch_size=256 * 1024)
    start = time.monotonic()
    for key, value in zip(keys, values, strict=True):
        producer.send(topic, key=key, value=value)
    producer.flush()
    elapsed = time.monotonic() - start
    producer.close()
    return len(values) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="ML-100k instead of ML-1M")
    args = parser.parse_args()
    dataset = load_movielens("ml-100k" if args.quick else "ml-1m")
    events = dataset.events
    keys = [u.encode() for u in events["user_id"]]
    values = [json.dumps({k: (float(v) if k == "value" else (int(v) if k == "ts" else v))
                          for k, v in row.items()}, separators=(",", ":")).encode()
              for row in events.to_dict("records")]
    with kafka_bootstrap() as bootstrap:
        tag = uuid.uuid4().hex[:6]
        config = KafkaConfig(bootstrap_servers=bootstrap, events_topic=f"bench-events-{tag}",
                             items_topic=f"bench-items-{tag}", dead_letter_topic=f"bench-dlq-{tag}")
        bare_config = config.model_copy(update={"events_topic": f"bench-bare-{tag}",
                                                "items_topic": f"bench-bare-items-{tag}"})
        ensure_topics(bare_config)
        bare = bare_producer(bootstrap, bare_config.events_topic, keys, values)
        result = replay(dataset, config, progress=False)
        rate = result.events_per_s
    summary = {"dataset": dataset.name, "events": len(events), "replay_events_per_s": round(rate, 1),
               "bare_producer_events_per_s": round(bare, 1), "ratio": round(rate / bare, 3)}
    print(f"replay {rate:,.0f} ev/s vs bare producer {bare:,.0f} ev/s ({dataset.name}, {len(events):,} events)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
