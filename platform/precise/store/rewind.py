"""Moving the lake's ledger back (`precise lake rewind`), and cutting files at the ledger.

A rewind lowers the ledger's next offset of some events partitions; the next ingest run deletes
what lies above and reads it again. Two things make that safe after compaction:

- `cut_at_ledger` (run by every ingest start, and by the rewind itself) removes every file that
  *spans* a ledger offset, not only those starting above it: a merged file `p0-0-200` with the
  ledger rewound to 100 is replaced by `p0-0-100` (its rows below 100) and deleted, together with
  any superseded source of it that reaches past 100. Afterwards no file of that partition reaches
  past the ledger, so a re-ingested range file can never lie inside a wider (merged) file: readers
  do not hide it and the next compaction pass does not delete it as superseded.
- The lower part is written before the spanning file is deleted (while the wider file exists the
  lower part is superseded, so readers see each event once), and the ledger moves first: a crash
  at any point leaves a state the next `cut_at_ledger` finishes.

Each rewind is recorded in the ledger (`rewinds`), with the offsets before and after.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pyarrow.compute as pc
import pyarrow.parquet as pq

from precise.store.files import Files
from precise.store.lake import (
    Layout,
    is_import_partition,
    load_ledger,
    range_file_name,
    save_ledger,
    spans,
    superseded,
)


class RewindError(ValueError):
    """A rewind that cannot be done as asked (a partition unknown, or an offset ahead of the ledger)."""


def cut_at_ledger(storage: Files, folder: str, offsets: dict[int, int]) -> list[str]:
    """In `folder` (recursively), make every range file end at or below its partition's ledger
    offset: files starting at or above it are deleted, files spanning it are cut. Returns the paths
    deleted."""
    files = storage.list_files(folder)
    hidden = superseded(files)
    deleted: list[str] = []
    for (sub, partition), ranges in sorted(spans(files).items()):
        limit = offsets.get(partition, 0)
        spanning = [(s, e, p) for s, e, p in ranges if s < limit < e]
        for start, _end, path in spanning:
            if path in hidden:
                continue  # a compaction source: its rows are in the wider file being cut
            table = pq.read_table(path, filesystem=storage.fs, partitioning=None)
            lower = table.filter(pc.less(table.column("offset"), limit))
            if lower.num_rows:
                storage.write_parquet(f"{sub}/{range_file_name(partition, start, limit)}", lower)
        for start, end, path in ranges:
            if start >= limit or (start < limit < end):
                storage.delete(path)
                deleted.append(path)
    return deleted


def rewind(storage: Files, topic: str, offsets: dict[int, int]) -> dict[str, object]:
    """Lower the ledger's next offsets of `topic` to `offsets` (per partition) and cut the lake's
    events and dead letters there. The caller holds the lake's writer lock / fence."""
    ledger = load_ledger(storage)
    current = ledger.offsets.get(topic)
    if not current:
        raise RewindError(f"the ledger of {storage.uri} has no offsets of topic {topic!r}")
    for partition, offset in offsets.items():
        if is_import_partition(partition):
            raise RewindError(f"{topic}[{partition}] holds an imported history (jobs/import_history.py), not a "
                              f"Kafka partition: nothing could re-read it")
        if partition not in current:
            raise RewindError(f"{topic}[{partition}] is not in the ledger (partitions: {sorted(current)})")
        base = ledger.base(topic, partition)
        if 0 < base and offset < base:
            raise RewindError(f"{topic}[{partition}]: offsets below {base} belong to an earlier incarnation of the "
                              f"topic (deleted and re-created), which Kafka no longer has; rewind to {base} or above")
        if offset < 0 or offset > current[partition]:
            raise RewindError(f"{topic}[{partition}]: offset {offset} is not between 0 and the ledger's "
                              f"{current[partition]} (a rewind only moves back)")
    new = {**current, **offsets}
    record = {"topic": topic, "at_ms": int(time.time() * 1000),
              "from": {str(p): current[p] for p in sorted(offsets)},
              "to": {str(p): o for p, o in sorted(offsets.items())}}
    rewinds = [*ledger.rewinds, record]
    save_ledger(storage, replace(ledger, offsets={**ledger.offsets, topic: new}, rewinds=rewinds))
    layout = Layout(storage)
    deleted = []
    if topic == ledger.events_topic:
        deleted += cut_at_ledger(storage, layout.events, new)
    deleted += cut_at_ledger(storage, f"{layout.dead_letter}/topic={topic}", new)
    return {**record, "files_deleted": len(deleted)}
