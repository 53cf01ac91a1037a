"""Ingest throughput vs a bare consumer on the same topic, and produce-to-lake lag, in one run.

    python benchmarks/ingest.py [--quick] [--runs N]   # --quick: ML-100k (else ML-1M); N: 3 with --quick

1. Replays the dataset into fresh topics (not timed here: benchmarks/replay.py measures that).
2. Bare baseline: a confluent-kafka consumer (the client Ray's reader uses) reading every record of
   the events topic, doing nothing with it.
3. Ingest: the real pipeline (Ray Data read_kafka -> validation -> dedupe -> Parquet lake ->
   ledger), from an empty lake to the end of both topics, Ray workers warmed up first on a small
   topic (a continuous job keeps them warm). ratio = ingest events/s / bare consumer events/s.
   Steps 2 and 3 run N times back to back on the same topic (each ingest into a fresh lake); the
   figures are medians with min / max, `ratio` the median of the per-run ratios. The load average
   at start and end says whether the machine was idle.
4. Lag: the continuous job (0.5 s poll interval) runs while events are produced at a steady rate;
   for each event, lag = the moment the ledger first covers its offset (a reader polls the ledger
   every 20 ms) minus its Kafka timestamp (set by the producer). p50 and p99 over all of them.

Kafka: PRECISE_KAFKA_BOOTSTRAP if set, else a private broker. Ray: RAY_ADDRESS if set, else a local
Ray started here. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _stack import kafka_bootstrap  # noqa: E402
from _stats import spread  # noqa: E402
from precise.config import KafkaConfig, PreciseConfig  # noqa: E402
from precise.data import load_movielens  # noqa: E402
from precise.events.producer import EventProducer  # noqa: E402
from precise.events.replay import replay  # noqa: E402
from precise.events.topics import end_offsets, ensure_topics  # noqa: E402
from precise.ingest.batch import Ingestor  # noqa: E402
from precise.ingest.job import IngestJob, connect_ray  # noqa: E402
from precise.store.files import Files  # noqa: E402
from precise.store.lake import load_ledger, read_events  # noqa: E402


def topics(bootstrap: str, name: str) -> KafkaConfig:
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    return KafkaConfig(bootstrap_servers=bootstrap, events_topic=f"bench-events-{tag}",
                       items_topic=f"bench-items-{tag}", dead_letter_topic=f"bench-dlq-{tag}", partitions=4)


def bare_consumer(kafka: KafkaConfig) -> tuple[int, float]:
    """Records/s of a plain confluent-kafka consumer reading the whole events topic."""
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(kafka.bootstrap_servers, kafka.events_topic)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "bench-bare",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(kafka.events_topic, p, 0) for p in ends])
    total, count = sum(ends.values()), 0
    started = time.monotonic()
    while count < total:
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error() is None and msg.value() is not None:
                count += 1
    elapsed = time.monotonic() - started
    consumer.close()
    return count, count / elapsed


def config_for(kafka: KafkaConfig, root: str) -> PreciseConfig:
    return PreciseConfig.model_validate({"kafka": kafka.model_dump(), "storage": {"root": root},
                                         "ingest": {"max_records_per_partition": 250_000, "build_sequences": False,
                                                    "read_timeout_s": 300}})


def ingest_all(config: PreciseConfig) -> tuple[float, dict]:
    """Run batches from an empty lake up to the current ends; seconds and per-stage totals."""
    with Ingestor(config) as ingestor:
        target = ingestor.end_offsets()
        started = time.monotonic()
        stats = {"batches": 0, "events": 0, "read_s": 0.0, "write_s": 0.0, "files": 0}
        while True:
            result = ingestor.run_batch(until=target)
            if not result.planned:
                break
            stats["batches"] += 1
            stats["events"] += result.events
            stats["read_s"] += result.read_s
            stats["write_s"] += result.write_s
            stats["files"] += result.files
        return time.monotonic() - started, stats


def measure_lag(bootstrap: str, root: str, rate: float, seconds: float) -> dict:
    """Produce at `rate` events/s for `seconds` under a running continuous job; lag percentiles."""
    kafka = topics(bootstrap, "lag")
    ensure_topics(kafka)
    config = config_for(kafka, root)
    stop = threading.Event()
    job = IngestJob(config, stop=stop, build_sequences=False)
    runner = threading.Thread(target=job.run_continuous, kwargs={"interval_s": 0.5}, daemon=True)
    runner.start()
    storage = Files(root)
    commits: list[tuple[float, dict[int, int]]] = []

    def watch() -> None:
        seen = None
        while not stop.is_set():
            ledger = load_ledger(storage)
            offsets = ledger.offsets.get(kafka.events_topic, {})
            if offsets != seen:
                commits.append((time.time(), dict(offsets)))
                seen = offsets
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(3)  # the job is polling
    total = int(rate * seconds)
    with EventProducer(kafka, linger_ms=5) as producer:
        started = time.monotonic()
        for i in range(total):
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send_event({"event_id": f"lag-{i}", "user_id": f"u{i % 500}", "item_id": f"i{i % 300}",
                                 "scene": "s", "action": "click", "ts": int(time.time() * 1000)})
        producer.flush()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        offsets = load_ledger(storage).offsets.get(kafka.events_topic, {})
        if sum(offsets.values()) >= total:
            break
        time.sleep(0.1)
    time.sleep(0.1)
    stop.set()
    runner.join(120)
    watcher.join(5)
    events = read_events(root, columns=["partition", "offset", "kafka_ts"]).to_pandas()
    visible = np.full(len(events), np.nan)
    for at, offsets in commits:  # the first commit whose offset passes each event
        for partition, next_offset in offsets.items():
            mask = (events["partition"].to_numpy() == partition) & (events["offset"].to_numpy() < next_offset)
            mask &= np.isnan(visible)
            visible[mask] = at
    lags = visible - events["kafka_ts"].to_numpy() / 1000.0
    lags = lags[~np.isnan(lags)]
    return {"lag_events": int(len(lags)), "lag_rate_per_s": rate, "lag_p50_s": round(float(np.percentile(lags, 50)), 3),
            "lag_p99_s": round(float(np.percentile(lags, 99)), 3), "lag_max_s": round(float(lags.max()), 3),
            "lag_batches": job.totals["batches"]}


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """RAY_ADDRESS's cluster if set, else a local Ray for the length of the benchmark."""
    import ray

    connect_ray()
    try:
        yield
    finally:
        ray.shutdown()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ML-100k instead of ML-1M")
    parser.add_argument("--runs", type=int, default=None, help="measured runs (default: 3 with --quick, else 1)")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else (3 if args.quick else 1)
    if runs < 1:
        parser.error("--runs must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    load_start = load_average()
    dataset = load_movielens("ml-100k" if args.quick else "ml-1m")
    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory(prefix="precise-bench-ingest-") as tmp, \
            ray_session():
        # warm-up: start the Ray workers on a small stream (a continuous job keeps them warm)
        warm = topics(bootstrap, "warm")
        small = type(dataset)(dataset.name, dataset.events.head(2_000), dataset.items, 2_000)
        replay(small, warm, progress=False)
        ingest_all(config_for(warm, f"{tmp}/warm"))

        kafka = topics(bootstrap, "main")
        replayed = replay(dataset, kafka, progress=False)
        measured = []
        for run in range(runs):  # each run: the bare consumer, then the ingest, back to back
            bare_count, bare_rate = bare_consumer(kafka)
            seconds, stats = ingest_all(config_for(kafka, f"{tmp}/lake{run}"))
            assert stats["events"] == len(dataset.events) == bare_count, (stats, bare_count)
            measured.append({"bare": bare_rate, "ingest": stats["events"] / seconds, "seconds": seconds, **stats})
            print(f"run {run + 1}/{runs}: ingest {measured[-1]['ingest']:,.0f} ev/s, bare consumer "
                  f"{bare_rate:,.0f} ev/s, ratio {measured[-1]['ingest'] / bare_rate:.3f}", file=sys.stderr)
        lag = measure_lag(bootstrap, f"{tmp}/lag", rate=500.0 if args.quick else 1_000.0,
                          seconds=20.0 if args.quick else 30.0)
    ratios = [m["ingest"] / m["bare"] for m in measured]
    median = {key: statistics.median(m[key] for m in measured)
              for key in ("ingest", "bare", "seconds", "read_s", "write_s", "batches", "files")}
    ingest_rate, bare_rate = median["ingest"], median["bare"]
    summary = {
        "dataset": dataset.name, "events": len(dataset.events), "ingest_events_per_s": round(ingest_rate, 1),
        "bare_consumer_events_per_s": round(bare_rate, 1), "ratio": round(statistics.median(ratios), 4),
        "ingest_s": round(median["seconds"], 2), "ingest_read_validate_s": round(median["read_s"], 2),
        "ingest_write_commit_s": round(median["write_s"], 2), "ingest_batches": median["batches"],
        "lake_files": median["files"], "replay_events_per_s": round(replayed.events_per_s, 1), **lag,
        "runs": runs, "ratio_spread": spread(ratios, 4),
        "ingest_events_per_s_spread": spread([m["ingest"] for m in measured], 1),
        "bare_consumer_events_per_s_spread": spread([m["bare"] for m in measured], 1),
        "ingest_s_spread": spread([m["seconds"] for m in measured], 3),
        "load_avg_start": load_start, "load_avg_end": load_average(),
    }
    print(f"ingest {ingest_rate:,.0f} ev/s vs bare consumer {bare_rate:,.0f} ev/s ({dataset.name}, median of {runs}); "
          f"lag p50 {lag['lag_p50_s']} s, p99 {lag['lag_p99_s']} s at {lag['lag_rate_per_s']:.0f} ev/s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
