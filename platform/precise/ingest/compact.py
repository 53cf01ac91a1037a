"""Compaction of the event lake: many small files of one partition and date become one.

Every micro-batch writes one file per Kafka partition and event date, so a continuous ingest at a
5 s interval adds up to 17,280 files per partition and day, and every reader of the lake pays per
file. Compaction merges the committed files of one partition in one date folder into a single file
named by the whole offset range they span, `p{P}-{first start}-{last end}`.

Safe against crashes and readers, with no lock beyond the ingest job's own (it runs in the job,
between batches):
- The merged file is written atomically under its final name *before* anything is deleted. From
  then on its sources are *superseded*: a file whose range lies inside a wider file of the same
  partition in the same folder. `lake.event_files` (every reader) skips superseded files, so a
  crash between the two steps never shows an event twice.
- Sources are deleted on a later pass, once the merged file is older than `grace_s`, so a reader
  that listed the folder just before the merge can still open the files it listed.
- Only files the incremental sequence builds have already read are merged: their end offset is at
  or below every `sequences/*/_state.json` offset for that partition (a build picks new files by
  their start offset, and a merged file starts where its oldest source did).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow.parquet as pq

from precise.store import sequences
from precise.store.files import Files
from precise.store.lake import Layout, parse_range_file_name, range_file_name, spans, superseded

log = logging.getLogger(__name__)


@dataclass
class CompactionResult:
    merged_files: int = 0  # new files written
    sources: int = 0  # files they replace (superseded until deleted)
    deleted: int = 0  # superseded files deleted in this pass


def sequence_offsets(storage: Files) -> dict[int, int] | None:
    """Per partition, the lowest offset any sequence family has read to (None: no builds yet)."""
    lowest: dict[int, int] | None = None
    for state in sequences.states(storage).values():
        offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
        if lowest is None:
            lowest = offsets
        else:  # a partition one family has not read at all: nothing of it may be merged
            lowest = {p: min(o, offsets[p]) for p, o in lowest.items() if p in offsets}
    return lowest


def compact_events(storage: Files, committed: dict[int, int], min_files: int, grace_s: float,
                   now: float | None = None) -> CompactionResult:
    """One pass over the events lake: delete superseded files past their grace period, then merge
    each (date, partition) that has at least `min_files` mergeable files (0: do nothing).

    `committed`: the ledger's next offset per partition of the events topic."""
    now = time.time() if now is None else now
    result = CompactionResult()
    if min_files == 0:  # compaction off
        return result
    files = storage.list_files(Layout(storage).events)
    old = superseded(files)
    result.deleted = _delete_expired(storage, files, old, now - grace_s)
    live = [f for f in files if f not in old]

    read_to = sequence_offsets(storage)
    for (folder, partition), ranges_of in sorted(spans(live).items()):
        limit = committed.get(partition, 0)
        if read_to is not None:
            limit = min(limit, read_to.get(partition, 0))
        ranges = [span for span in ranges_of if span[1] <= limit]
        if len(ranges) < max(min_files, 2):
            continue
        sources = [path for _, _, path in ranges]
        table = pq.ParquetDataset(sources, filesystem=storage.fs, partitioning=None).read()
        table = table.sort_by("offset")
        target = f"{folder}/{range_file_name(partition, ranges[0][0], ranges[-1][1])}"
        storage.write_parquet(target, table)  # atomic, durable: the sources are superseded from here
        result.merged_files += 1
        result.sources += len(sources)
    if result.merged_files or result.deleted:
        log.info("lake compaction: %d files merged into %d, %d superseded files deleted",
                 result.sources, result.merged_files, result.deleted)
    return result


def _delete_expired(storage: Files, files: list[str], old: set[str], cutoff: float) -> int:
    """Delete superseded files covered by a file written before `cutoff` (epoch s): the merge has
    been visible for longer than the grace period."""
    if not old:
        return 0
    wider = spans([f for f in files if f not in old])
    stale = set(spans(sorted(old)))  # only these folders need their files' times
    mtimes = {info.path: info.mtime.timestamp() if info.mtime else float("inf")
              for key in stale for info in storage.fs.get_file_info([f for _, _, f in wider.get(key, [])])}
    deleted = 0
    for path in sorted(old):
        partition, start, end = parse_range_file_name(path)
        covering = [f for s, e, f in wider.get((path.rsplit("/", 1)[0], partition), []) if s <= start and end <= e]
        if any(mtimes.get(f, float("inf")) <= cutoff for f in covering):
            storage.delete(path)
            deleted += 1
    return deleted
