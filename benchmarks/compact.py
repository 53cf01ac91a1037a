"""What lake compaction buys a reader: read the lake of a day of continuous ingest, before and
after `precise.ingest.compact.compact_events`, in the same run.

    python benchmarks/compact.py [--quick]

The lake is written the way the ingest job writes it in continuous mode: one file per Kafka
partition per micro-batch (default: 4 partitions x 2,000 batches of 25 events, a few hours at a
5 s interval; `--quick`: 500 batches). The reader is `precise.store.lake.read_events`, what the
pipeline and the tools use. No Kafka or Ray needed. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from precise.ingest.compact import compact_events  # noqa: E402
from precise.store.files import Files  # noqa: E402
from precise.store.lake import EVENT_SCHEMA, Layout, Ledger, event_files, read_events, save_ledger  # noqa: E402

DAY_MS = 1_700_006_400_000  # a UTC midnight


def write_lake(storage: Files, partitions: int, batches: int, per_batch: int) -> int:
    layout = Layout(storage)
    rng = np.random.default_rng(0)
    for batch in range(batches):
        for partition in range(partitions):
            start = batch * per_batch
            offsets = np.arange(start, start + per_batch)
            n = len(offsets)
            table = pa.table({
                "event_id": [f"e{partition}-{o}" for o in offsets],
                "user_id": [f"u{u}" for u in rng.integers(0, 5_000, n)],
                "item_id": [f"i{i}" for i in rng.integers(0, 20_000, n)],
                "scene": ["feed"] * n, "action": ["click"] * n,
                "ts": DAY_MS + batch * 5_000 + np.arange(n), "value": [None] * n, "extra": [None] * n,
                "partition": [partition] * n, "offset": offsets, "kafka_ts": [0] * n, "ingest_ts": [0] * n,
            }, schema=EVENT_SCHEMA)
            storage.write_parquet(layout.event_file("2023-11-15", partition, start, start + per_batch), table,
                                  durable=False)
    storage.sync()
    save_ledger(storage, Ledger(offsets={"ev": {p: batches * per_batch for p in range(partitions)}},
                                events_topic="ev", items_topic="it"))
    return partitions * batches * per_batch


def time_reads(storage: Files, repeats: int) -> tuple[float, int]:
    seconds, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = read_events(storage).num_rows
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 batches instead of 2,000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    partitions, batches, per_batch = 4, (500 if args.quick else 2_000), 25
    with tempfile.TemporaryDirectory() as folder:
        storage = Files(folder)
        events = write_lake(storage, partitions, batches, per_batch)
        files_before = len(event_files(storage))
        before_s, rows_before = time_reads(storage, args.repeats)
        started = time.perf_counter()
        result = compact_events(storage, {p: batches * per_batch for p in range(partitions)}, min_files=32,
                                grace_s=0)
        compact_s = time.perf_counter() - started
        compact_events(storage, {}, min_files=32, grace_s=0)  # the next pass deletes the merged-away files
        files_after = len(event_files(storage))
        after_s, rows_after = time_reads(storage, args.repeats)
    if not rows_before == rows_after == events:
        raise SystemExit(f"rows differ: {rows_before} before, {rows_after} after, {events} written")
    print(json.dumps({
        "benchmark": "compact", "quick": args.quick, "events": events, "partitions": partitions,
        "files_before": files_before, "files_after": files_after, "files_merged": result.sources,
        "read_before_s": round(before_s, 3), "read_after_s": round(after_s, 3),
        "read_speedup": round(before_s / after_s, 1), "compaction_s": round(compact_s, 2),
        "repeats": args.repeats,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
