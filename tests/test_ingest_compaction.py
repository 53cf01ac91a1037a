"""Compaction inside the real ingest job (Kafka, Ray Data): the lake keeps every event exactly once
and the incremental sequence builds stay equal to a full rebuild."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

from _ingest_support import assert_clean_lake
from precise.config import PreciseConfig
from precise.data import SyntheticConfig, generate_synthetic
from precise.data.movielens import EventDataset
from precise.events.replay import replay
from precise.ingest.job import IngestJob, connect_ray
from precise.ingest.sequences import SequenceBuilder
from precise.metrics.prometheus import scrape, value
from precise.store.files import Files
from precise.store.lake import Layout, event_files, read_events
from precise.store.sequences import read_sequences

pytestmark = pytest.mark.integration


def _sequences(root: str) -> dict[str, list[dict]]:
    return {name: sorted(read_sequences(root, name).to_pylist(), key=lambda row: row["user_id"])
            for name in ("all", "like")}


def test_compaction_keeps_the_lake_exact_and_sequences_incremental(kafka_config, ray_head, tmp_path):
    root = str(tmp_path / "precise")
    config = PreciseConfig.model_validate({
        "kafka": kafka_config.model_dump(), "storage": {"root": root},
        # small batches: several files per partition and date, which compaction then merges
        "ingest": {"max_records_per_partition": 150, "publish_dead_letters": False,
                   "compact_min_files": 3, "compact_grace_s": 0},
        "sequences": {"max_len": 20, "buckets": 2, "all_scene": {"name": "all", "actions": ["click"]},
                      "targets": [{"name": "like", "actions": ["like"]}]},
    })
    stream = generate_synthetic(SyntheticConfig(users=80, initial_items=40, new_items_per_day=10, days=3,
                                                events_per_second=0.02, seed=3))
    cutoff = int(stream.events["ts"].quantile(0.6))
    first = EventDataset(stream.name, stream.events[stream.events["ts"] < cutoff].reset_index(drop=True),
                         stream.items, stream.num_ratings)
    replay(first, kafka_config, progress=False)
    connect_ray()

    summary = IngestJob(config).run_once()
    assert summary["events"] == len(first.events) and summary["batches"] >= 4
    assert summary["files_compacted"] > 0, summary
    merged = summary["files_compacted"]
    storage = Files(root)
    # readers see the merged files only (the merged-away ones wait for the next pass to be deleted)
    assert len(event_files(storage)) < summary["files_compacted"]

    replay(stream, kafka_config, progress=False)  # the remaining 40%
    summary = IngestJob(config).run_once()
    assert summary["events"] == len(stream.events) - len(first.events)
    merged += summary["files_compacted"]

    lake = read_events(root, columns=["event_id", "offset", "partition"])
    assert sorted(lake.column("event_id").to_pylist()) == sorted(stream.events["event_id"])  # exactly once
    incremental = _sequences(root)
    assert all(incremental.values())
    SequenceBuilder(config).build(full=True)
    assert _sequences(root) == incremental  # incremental builds across compactions = a full rebuild

    # every live file is what its name says: its partition's events, inside its offset range
    for path in event_files(storage):
        name = path.rsplit("/", 1)[-1]
        part, start, end = (int(x) for x in name.removesuffix(".parquet")[1:].split("-"))
        table = pq.read_table(path, filesystem=storage.fs, columns=["partition", "offset"])
        assert set(table.column("partition").to_pylist()) == {part}
        offsets = table.column("offset").to_pylist()
        assert start <= min(offsets) and max(offsets) < end and offsets == sorted(offsets)
    assert_clean_lake(root)
    assert not storage.temp_files(Layout(storage).lake)

    # the job's metric counts the merged files (at least ours: other tests' compactions share the tag)
    url = f"http://127.0.0.1:{ray_head.metrics_port}/metrics"
    deadline = time.monotonic() + 60
    while (value(scrape(url), "ray_precise_ingest_files_compacted_total", stage="merged") or 0) < merged:
        assert time.monotonic() < deadline, "precise_ingest_files_compacted not exported"
        time.sleep(2)
