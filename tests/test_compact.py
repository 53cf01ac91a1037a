"""Lake compaction: merged files replace their sources for every reader, crash-safe, and only files
every sequence build has read are merged."""

from __future__ import annotations

import pyarrow as pa
import pytest

from precise.ingest.compact import compact_events, superseded
from precise.store import sequences
from precise.store.files import Files
from precise.store.lake import EVENT_SCHEMA, Layout, Ledger, event_files, read_events, save_ledger

T0 = 1_577_836_800_000  # 2020-01-01T00:00Z, ms


def _events(partition: int, start: int, end: int, day: int) -> pa.Table:
    offsets = list(range(start, end, 5))  # two events per 10 offsets
    n = len(offsets)
    return pa.table({
        "event_id": [f"p{partition}-o{o}" for o in offsets], "user_id": [f"u{o % 7}" for o in offsets],
        "item_id": [f"i{o % 11}" for o in offsets], "scene": ["s"] * n, "action": ["click"] * n,
        "ts": [T0 + day * 86_400_000 + o for o in offsets], "value": [None] * n, "extra": [None] * n,
        "partition": [partition] * n, "offset": offsets, "kafka_ts": [0] * n, "ingest_ts": [0] * n,
    }, schema=EVENT_SCHEMA)


@pytest.fixture
def lake(tmp_path):
    """Day 0: partition 0 in ten files [0, 100), partition 1 in five [0, 50); day 1: one file of
    partition 0; and a file above the ledger left by a crashed batch. Sequences read p0 up to 80."""
    storage = Files(str(tmp_path))
    layout = Layout(storage)
    for partition, end in ((0, 100), (1, 50)):
        for start in range(0, end, 10):
            storage.write_parquet(layout.event_file("2020-01-01", partition, start, start + 10),
                                  _events(partition, start, start + 10, 0))
    storage.write_parquet(layout.event_file("2020-01-02", 0, 100, 110), _events(0, 100, 110, 1))
    storage.write_parquet(layout.event_file("2020-01-02", 0, 110, 120), _events(0, 110, 120, 1))  # uncommitted
    save_ledger(storage, Ledger(offsets={"ev": {0: 110, 1: 50}}, events_topic="ev", items_topic="it"))
    sequences.write_state(storage, "all", {"offsets": {"0": 80, "1": 50}})
    return storage


def _sorted_events(storage: Files) -> list[dict]:
    return sorted(read_events(storage).to_pylist(), key=lambda row: row["event_id"])


def test_superseded_files_are_those_inside_a_wider_range():
    paths = ["d/p0001-0-10.parquet", "d/p0001-10-20.parquet", "d/p0001-0-20.parquet", "d/p0002-0-10.parquet",
             "e/p0001-0-10.parquet", "d/notes.txt"]
    assert superseded(paths) == {"d/p0001-0-10.parquet", "d/p0001-10-20.parquet"}
    assert superseded(["d/p0001-0-10.parquet", "d/p0001-0-10.parquet"]) == set()  # equal ranges: neither


def test_merges_what_sequences_have_read_and_readers_see_each_event_once(lake):
    before = _sorted_events(lake)
    assert len(before) == 2 * (10 + 5 + 1)
    result = compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=600, now=1e12)
    # p0 day 0: [0, 80) merged (sequences read to 80), [80, 100) kept; p1 day 0: [0, 50) merged
    assert (result.merged_files, result.sources, result.deleted) == (2, 8 + 5, 0)
    names = sorted(path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for path in event_files(lake))
    assert names == ["date=2020-01-01/p0000-000000000000-000000000080.parquet",
                     "date=2020-01-01/p0000-000000000080-000000000090.parquet",
                     "date=2020-01-01/p0000-000000000090-000000000100.parquet",
                     "date=2020-01-01/p0001-000000000000-000000000050.parquet",
                     "date=2020-01-02/p0000-000000000100-000000000110.parquet"]
    # the sources are still on disk (a reader may have listed them): nobody reads them twice
    assert len(lake.list_files(Layout(lake).events)) == 5 + 13 + 1
    assert _sorted_events(lake) == before


def test_sources_are_deleted_after_the_grace_period(lake):
    before = _sorted_events(lake)
    compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=600)
    assert compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=600).deleted == 0  # still in grace
    later = compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=600, now=4e9)  # far past the grace
    assert later.deleted == 13 and later.merged_files == 0
    on_disk = lake.list_files(Layout(lake).events)
    assert len(on_disk) == 5 + 1  # the live files and the crashed batch's (the ingest job cleans that)
    assert _sorted_events(lake) == before


def test_a_compacted_file_is_merged_again_with_newer_files(lake):
    compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=0)
    sequences.write_state(lake, "all", {"offsets": {"0": 110, "1": 50}})
    before = _sorted_events(lake)
    result = compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=0)
    assert (result.merged_files, result.sources) == (1, 3)  # [0, 80) + [80, 90) + [90, 100) -> [0, 100)
    assert compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=0).deleted == 3
    assert _sorted_events(lake) == before


def test_nothing_is_merged_that_a_sequence_family_has_not_read(lake):
    sequences.write_state(lake, "like", {"offsets": {"0": 30}})
    result = compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=0)
    # p0: only [0, 30) is read by both families; p1: the `like` family has not read it at all
    assert (result.merged_files, result.sources) == (1, 3)


def test_without_sequence_builds_the_ledger_bounds_the_merge(lake):
    for path in lake.list_files(lake.path("sequences")):
        lake.delete(path)
    off = compact_events(lake, {0: 110, 1: 50}, min_files=0, grace_s=0)
    assert (off.merged_files, off.sources, off.deleted) == (0, 0, 0)
    result = compact_events(lake, {0: 110, 1: 50}, min_files=3, grace_s=0)
    assert (result.merged_files, result.sources) == (2, 10 + 5)  # never the uncommitted [110, 120)
