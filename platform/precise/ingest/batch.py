"""One ingest micro-batch, end to end, with exactly-once effects on the lake.

    plan    ledger next offsets -> current end offsets (read the ends first, then exactly that range)
    read    one Ray task per range (precise.ingest.reader, read_committed, up to the last delivered
            offset), validated by precise.ingest.validate
    settle  per partition, the range actually covered: from the planned start to the greatest offset
            seen + 1 (Ray's reader may stop early on a timeout with only a warning; we never trust
            the requested end); duplicates of event ids already in the lake or earlier in the batch
            become dead letters
    write   event files by date, dead-letter files (and topic), the item table
    commit  the ledger's next version (create-if-absent: a fenced writer cannot), after all of that

Exactly once: files are named by (partition, covered range), and before writing, files at or above
the ledger's offsets (left by a batch that crashed before its commit) are deleted, so a re-run never
adds a second copy of a range, whether it reads the same range or a longer or shorter one.

Duplicate event ids (producer retries, replays): checked against an in-memory index of every event
id in the lake, built at start-up from the committed files' `event_id` column. The lake itself is
the persisted index: nothing separate can disagree with it after a crash, and rejecting at write
time keeps the lake duplicate-free for every reader (training reads it without a dedupe step). The
cost is memory: about 100 bytes per event id (1.6 M ids, ML-1M: ~150 MB). Past ~10^8 events, keep
the index per date window instead (retries arrive close to the original).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from precise.config import PreciseConfig
from precise.ingest.faults import Faults
from precise.ingest.items import item_rows, merge_items
from precise.ingest.kafka import DeadLetterPublisher, librdkafka_options, topic_ids, watermarks
from precise.ingest.reader import read_partition
from precise.ingest.validate import VALIDATED_SCHEMA, validate_records
from precise.store.files import Files
from precise.store.lake import (
    DEAD_LETTER_SCHEMA,
    EVENT_SCHEMA,
    Layout,
    Ledger,
    event_files,
    load_ledger,
    read_items,
    save_ledger,
)
from precise.store.lease import WriterLease
from precise.store.rewind import cut_at_ledger

log = logging.getLogger(__name__)

WRITE_THREADS = 4  # event files written at once by a batch (local disk and object stores alike)


class LakeError(RuntimeError):
    """The lake and the configuration or Kafka disagree in a way that needs an operator."""


@dataclass(frozen=True)
class PartitionRange:
    topic: str
    partition: int
    start: int
    end: int  # exclusive; what we ask for, not necessarily what we get


@dataclass
class BatchResult:
    planned: int = 0  # offsets in the planned ranges (0: nothing new in Kafka)
    records: int = 0  # records read and settled (valid + rejected)
    advanced: int = 0  # offsets the ledger moved (records + transaction markers + aborted records)
    events: int = 0  # new events in the lake
    dead_letters: int = 0
    items: int = 0  # item records merged into the item table
    caught_up: bool = True  # the ledger reached the end offsets seen when the batch was planned
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    latency_s: float = 0.0
    dead_letter_kinds: dict[tuple[str, str], int] = field(default_factory=dict)
    retention_gaps: dict[str, int] = field(default_factory=dict)  # per topic: offsets lost to retention
    dead_letter_publish_failures: int = 0  # rejects not copied to the dead-letter topic (they are in the lake)
    files: int = 0  # lake files written
    read_s: float = 0.0  # of latency_s: Kafka read + validation (Ray Data)
    write_s: float = 0.0  # of latency_s: dedupe, files, dead-letter topic, items, ledger

    def summary(self) -> dict[str, Any]:
        return {"records": self.records, "events": self.events, "dead_letters": self.dead_letters,
                "items": self.items, "caught_up": self.caught_up, "lag": sum(self.lag.values()),
                "files": self.files, "latency_s": round(self.latency_s, 3), "read_s": round(self.read_s, 3),
                "write_s": round(self.write_s, 3)}


class Ingestor:
    """Owns one lake: its ledger, its event-id index, and the batches that extend it.

    Use as a context manager (holds the lake's lock); `run_batch()` ingests one micro-batch.
    """

    def __init__(self, config: PreciseConfig, faults: Faults | None = None) -> None:
        self.config = config
        self.kafka = config.kafka
        self.settings = config.ingest
        self.storage = Files(config.storage.resolved_root())
        self.layout = Layout(self.storage)
        self.faults = faults or Faults()
        self.allowed_actions = tuple(self.kafka.allowed_actions)
        self.ledger = Ledger()
        self.event_ids: set[str] = set()
        self.items: pa.Table | None = None
        self.metrics: Any = None
        self._publisher: DeadLetterPublisher | None = None
        self._lock: Any = None
        self._lease: WriterLease | None = None
        self._dirty = True  # the lake may hold uncommitted files: clean before the next write
        self._gaps: dict[tuple[str, int], tuple[int, int]] = {}  # retention gaps the planned batch skips
        self._topic_ids: dict[str, str] = {}  # Kafka topic ids seen by the planned batch

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Ingestor:
        self._lock = self.storage.lock(self.layout.lock) if self.faults.flock else contextlib.nullcontext()
        self._lock.__enter__()
        try:
            # flock holds on one machine only; the lease also on object stores and shared volumes,
            # and it is taken before _load, whose clean-up deletes files above the ledger
            self._lease = WriterLease(self.storage, self.settings.writer_lease_s, self.faults.lease_race_s)
            ledger = load_ledger(self.storage)
            generation = self._lease.acquire(same_host_is_stale=self.storage.local and self.faults.flock,
                                             floor=ledger.writer_generation)
            # the fence: a ledger version of this generation, before anything is deleted or written,
            # so a previous holder that stalled past its lease can never commit (it would create
            # the version this one just created); also migrates a single-file ledger to versions
            save_ledger(self.storage, replace(ledger, writer_generation=generation), stamp=False)
            self._load()
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self._lease is not None:
            self._lease.release()
        self._lock.__exit__(*exc)

    def _load(self) -> None:
        self.ledger = load_ledger(self.storage)
        for role, have, want in (("events", self.ledger.events_topic, self.kafka.events_topic),
                                 ("items", self.ledger.items_topic, self.kafka.items_topic)):
            if have is not None and have != want:
                raise LakeError(f"the lake at {self.storage.uri} holds {role} of topic {have!r}, the config "
                                f"names {want!r}; use another storage.root or the same topic")
        self.ledger.events_topic, self.ledger.items_topic = self.kafka.events_topic, self.kafka.items_topic
        self._clean()
        committed = event_files(self.storage)  # committed, without files a compaction superseded
        if committed:
            ids = pads.dataset(committed, format="parquet", filesystem=self.storage.fs).to_table(columns=["event_id"])
            self.event_ids = set(ids.column("event_id").to_pylist())
        self.items = read_items(self.storage)
        log.info("lake %s: %d events, %d items, ledger %s", self.storage.uri, len(self.event_ids),
                 self.items.num_rows, self.ledger.offsets)

    def _offsets(self, role: str) -> dict[int, int]:
        topic = self.kafka.events_topic if role == "events" else self.kafka.items_topic
        return self.ledger.offsets.get(topic, {})

    def _recover(self) -> None:
        """After a failed batch: the ledger on disk is the truth; reload if it moved, else clean."""
        on_disk = load_ledger(self.storage)
        if on_disk.offsets != self.ledger.offsets:
            self._load()
        else:
            self._clean()

    def _clean(self) -> None:
        """Delete what a crashed or failed batch left: files above the ledger, temporary files."""
        # cut_at_ledger also cuts files that span the ledger (left by a rewind after compaction)
        removed = cut_at_ledger(self.storage, self.layout.events, self._offsets("events"))
        for role, topic in (("events", self.kafka.events_topic), ("items", self.kafka.items_topic)):
            removed += cut_at_ledger(self.storage, f"{self.layout.dead_letter}/topic={topic}", self._offsets(role))
        temp = self.storage.temp_files(self.layout.lake)
        for path in temp:
            self.storage.delete(path)
        removed += temp
        if removed:
            log.warning("removed %d uncommitted files left by an interrupted batch", len(removed))
        self._dirty = False

    # ---- one batch --------------------------------------------------------------------------------

    def run_batch(self, until: dict[str, dict[int, int]] | None = None) -> BatchResult:
        """Ingest the records between the ledger and the current ends (or `until`, if lower).

        Raises on infrastructure errors (broker down, Ray failure); never on a bad record. After
        an exception the lake is unchanged (its next run cleans whatever was half written).
        """
        started = time.monotonic()
        try:
            if self._dirty:
                self._recover()
            result = self._run_batch(until)
        except BaseException:
            self._dirty = True
            self.items = None  # reload: a failed batch may have merged items already (harmless)
            if self.metrics is not None:
                self.metrics.failed(time.monotonic() - started)
            raise
        result.latency_s = time.monotonic() - started
        if self.metrics is not None:
            try:
                self.metrics.committed({self.kafka.events_topic: result.events, self.kafka.items_topic: result.items},
                                       result.dead_letter_kinds, result.lag, result.latency_s, result.records > 0)
                for topic, n in result.retention_gaps.items():
                    self.metrics.retention_gap(topic, n)
                if result.dead_letter_publish_failures:
                    self.metrics.dead_letter_publish_failed(self.kafka.dead_letter_topic,
                                                            result.dead_letter_publish_failures)
            except Exception:  # metrics are best effort; the batch is committed
                log.exception("recording ingest metrics failed")
        return result

    def end_offsets(self) -> dict[str, dict[int, int]]:
        marks = watermarks(self.kafka, self.settings, [self.kafka.events_topic, self.kafka.items_topic])
        return {t: {p: high for p, (_, high) in parts.items()} for t, parts in marks.items()}

    def _check_topic_ids(self, topics: list[str]) -> None:
        """Start a new incarnation of a topic that was deleted and re-created since the ledger last
        committed it (its Kafka topic id changed).

        Its offsets start again at 0. The ledger keeps the old incarnation's offsets as history and
        its next offsets become the new incarnation's `offset_base`: the new records get lake
        offsets (file names, ledger, `offset` column) after the old ones, so the old incarnation's
        committed files stay readable, and are neither overwritten nor superseded by the new ones.
        The new incarnation is read from its earliest offset. Recorded by the next commit.
        """
        current = topic_ids(self.kafka, self.settings, topics)
        for topic, new in current.items():
            old = self.ledger.topic_ids.get(topic)
            if old is None or old == new:
                continue
            offsets = dict(self.ledger.offsets.get(topic, {}))
            log.warning("topic %r was deleted and re-created (topic id %s in the ledger of %s, %s in Kafka): "
                        "the old incarnation's events stay in the lake (next offsets %s); the new one is read "
                        "from its earliest offset, its lake offsets continue after the old ones", topic, old,
                        self.storage.uri, new, offsets)
            history = {"topic": topic, "topic_id": old, "offsets": {str(p): o for p, o in sorted(offsets.items())},
                       "offset_base": {str(p): o for p, o in sorted(self.ledger.offset_base.get(topic, {}).items())},
                       "ended_at_ms": int(time.time() * 1000), "new_topic_id": new}
            self.ledger = replace(self.ledger, incarnations=[*self.ledger.incarnations, history],
                                  offset_base={**self.ledger.offset_base, topic: offsets},
                                  topic_ids={**self.ledger.topic_ids, topic: new})
        self._topic_ids = {**self.ledger.topic_ids, **current}

    def _plan(self, marks: dict[str, dict[int, tuple[int, int]]], until: dict[str, dict[int, int]] | None
              ) -> list[PartitionRange]:
        ranges = []
        self._gaps = {}
        for topic, parts in marks.items():
            capped = topic == self.kafka.events_topic  # the compacted item topic is read to its end
            for partition, (low, high) in parts.items():
                start = self.ledger.next_offset(topic, partition)  # in the lake's offsets: to Kafka's
                start = None if start is None else start - self.ledger.base(topic, partition)
                if start is not None and start > high:
                    raise LakeError(f"{topic}[{partition}] ends at offset {high}, below the ledger's {start}: "
                                    f"was the topic deleted and re-created? The lake at {self.storage.uri} "
                                    f"belongs to the old topic")
                if start is None or start < low:
                    if start is not None:
                        log.error("%s[%d]: offsets %d..%d were deleted by Kafka retention before ingestion",
                                  topic, partition, start, low)
                        # recorded in the ledger (and counted) by the batch that moves past them
                        self._gaps[(topic, partition)] = (start, low)
                    start = low
                end = high
                if until is not None:
                    end = min(end, until.get(topic, {}).get(partition, high))
                if capped:
                    end = min(end, start + self.settings.max_records_per_partition)
                ranges.append(PartitionRange(topic, partition, start, max(start, end)))
        return ranges

    def _run_batch(self, until: dict[str, dict[int, int]] | None) -> BatchResult:
        topics = [self.kafka.events_topic, self.kafka.items_topic]
        marks = watermarks(self.kafka, self.settings, topics)
        self._check_topic_ids([t for t in topics if marks.get(t)])
        ranges = self._plan(marks, until)
        todo = [r for r in ranges if r.end > r.start]
        highs = {(t, p): high for t, parts in marks.items() for p, (_, high) in parts.items()}
        if not todo:
            return BatchResult(lag=self._lag(highs))
        self.faults.next_batch()
        planned = sum(r.end - r.start for r in todo)
        started = time.monotonic()
        validated, delivered = self._read(todo)
        covered, validated = settle(validated, todo, delivered)
        covered, validated = self._to_lake_offsets(covered, validated)
        read_s = time.monotonic() - started
        if not covered:  # nothing came back (e.g. every read timed out): try again later
            return BatchResult(planned=planned, caught_up=False, lag=self._lag(highs), read_s=read_s)
        result = self._write_and_commit(validated, covered, highs)
        result.planned, result.read_s, result.write_s = planned, read_s, time.monotonic() - started - read_s
        return result

    def _to_lake_offsets(self, covered: dict[tuple[str, int], tuple[int, int]], validated: pa.Table
                         ) -> tuple[dict[tuple[str, int], tuple[int, int]], pa.Table]:
        """Kafka offsets -> the lake's (+ the offset base of a re-created topic's incarnation)."""
        bases = {key: self.ledger.base(*key) for key in covered}
        if not any(bases.values()):
            return covered, validated
        covered = {key: (start + bases[key], stop + bases[key]) for key, (start, stop) in covered.items()}
        shift = np.zeros(validated.num_rows, dtype=np.int64)
        topics, parts = validated.column("topic").to_pylist(), validated.column("partition").to_pylist()
        for i, key in enumerate(zip(topics, parts, strict=True)):
            shift[i] = bases.get(key, 0)
        offsets = pc.add(validated.column("offset"), pa.array(shift))
        return covered, validated.set_column(validated.schema.get_field_index("offset"), "offset", offsets)

    def _read(self, todo: list[PartitionRange]) -> tuple[pa.Table, dict[tuple[str, int], int]]:
        """Read and validate each planned range in a Ray task; (validated rows, delivered end per range).

        One task per partition range (precise.ingest.reader): it stops at the last delivered
        offset, so transaction markers and aborted records never make a batch wait.
        """
        import ray

        options = librdkafka_options(self.kafka, self.settings)
        kwargs = self.validation_options()
        task = ray.remote(_read_and_validate).options(num_cpus=self.settings.read_num_cpus, num_returns=2,
                                                      max_retries=0)
        refs = [task.remote(self.kafka.bootstrap_servers, options, r.topic, r.partition, r.start, r.end,
                            self.settings.read_timeout_s, kwargs) for r in todo]
        tables = ray.get([t for t, _ in refs])
        ends = ray.get([e for _, e in refs])
        delivered = {(r.topic, r.partition): end for r, end in zip(todo, ends, strict=True)}
        tables = [t for t in tables if t.num_rows]
        return (pa.concat_tables(tables) if tables else VALIDATED_SCHEMA.empty_table()), delivered

    def validation_options(self) -> dict[str, Any]:
        """The keyword arguments of `validate_records` for this lake's topics and settings."""
        return {"events_topic": self.kafka.events_topic, "items_topic": self.kafka.items_topic,
                "allowed_actions": self.allowed_actions, "max_payload_bytes": self.settings.max_payload_bytes,
                "max_event_time_ahead_s": self.settings.max_event_time_ahead_s,
                "field_mapping": self.settings.field_mapping, "item_field_mapping": self.settings.item_field_mapping}

    def commit_validated(self, validated: pa.Table, covered: dict[tuple[str, int], tuple[int, int]]) -> BatchResult:
        """Write and commit rows validated outside a Kafka read (precise.ingest.history): the same
        dedupe, files, dead letters and ledger commit as a batch, for the ranges in `covered`."""
        if self._dirty:
            self._recover()
        self._topic_ids = dict(self.ledger.topic_ids)
        self._gaps = {}
        try:
            return self._write_and_commit(validated, covered, {})
        except BaseException:
            self._dirty = True
            raise

    def commit_ledger(self, ledger: Ledger) -> None:
        """Save `ledger` as this writer (refused once another writer fenced this one)."""
        if self._lease is not None:
            self._lease.check(load_ledger(self.storage).writer_generation)
        save_ledger(self.storage, ledger)
        self.ledger = ledger

    def _split_events(self, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(new valid events, rejects) of the events topic, duplicates turned into rejects."""
        valid = rows.filter(pc.is_null(rows.column("reason")))
        rejected = rows.filter(pc.is_valid(rows.column("reason")))
        ids = valid.column("event_id").to_pylist()
        batch_ids = set(ids)
        if len(batch_ids) == len(ids) and self.event_ids.isdisjoint(batch_ids):
            return valid, rejected  # the usual case, decided by two set operations instead of a loop
        first_at: dict[str, tuple[int, int]] = {}
        reasons: list[str | None] = []
        parts, offsets = valid.column("partition").to_pylist(), valid.column("offset").to_pylist()
        for event_id, part, off in zip(ids, parts, offsets, strict=True):
            if event_id in self.event_ids:
                reasons.append("duplicate event_id: already in the lake")
            elif event_id in first_at:
                p0, o0 = first_at[event_id]
                reasons.append(f"duplicate event_id: first seen at partition {p0} offset {o0}")
            else:
                first_at[event_id] = (part, off)
                reasons.append(None)
        dup = pa.array([r is not None for r in reasons], pa.bool_())
        if pc.any(dup).as_py():
            dups = valid.filter(dup)
            dups = dups.set_column(dups.schema.get_field_index("reason"), "reason",
                                   pa.array([r for r in reasons if r is not None], pa.string()))
            dups = dups.set_column(dups.schema.get_field_index("reason_kind"), "reason_kind",
                                   pa.array(["duplicate_event_id"] * dups.num_rows, pa.string()))
            rejected = pa.concat_tables([rejected, dups])
            valid = valid.filter(pc.invert(dup))
        return valid, rejected

    def _write_and_commit(self, validated: pa.Table, covered: dict[tuple[str, int], tuple[int, int]],
                          highs: dict[tuple[str, int], int]) -> BatchResult:
        events_topic, items_topic = self.kafka.events_topic, self.kafka.items_topic
        now = int(time.time() * 1000)
        is_event = pc.equal(validated.column("topic"), events_topic)
        events, rejected = self._split_events(validated.filter(is_event))
        item_records = validated.filter(pc.equal(validated.column("topic"), items_topic))
        rejected = pa.concat_tables([rejected, item_records.filter(pc.is_valid(item_records.column("reason")))])
        item_records = item_records.filter(pc.is_null(item_records.column("reason")))

        if self._lease is not None:  # a fenced writer writes nothing
            self._lease.check()
        self.faults.hit("before_write")
        event_files = self._event_files(events, covered, now)
        files = len(event_files)
        if event_files:
            self.storage.write_parquet(*event_files[0], durable=False)
            self.faults.hit("mid_write")
            # The rest in parallel: a backfill batch writes one file per partition and event date (776
            # for ML-100k), and pyarrow's Parquet writer and the file calls release the GIL. The
            # ledger below still waits for all of them (and for sync()) before it vouches for them.
            with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
                list(pool.map(lambda item: self.storage.write_parquet(*item, durable=False), event_files[1:]))
        dead_letters = _dead_letter_table(rejected, now)
        to_publish: list[dict[str, Any]] = []
        for (topic, part), (start, stop) in covered.items():
            rows = dead_letters.filter(pc.and_(pc.equal(dead_letters.column("topic"), topic),
                                               pc.equal(dead_letters.column("partition"), part)))
            if rows.num_rows:
                path = self.layout.dead_letter_file(topic, part, start, stop)
                self.storage.write_parquet(path, rows, durable=False)
                files += 1
                if self.settings.publish_dead_letters:
                    to_publish += [{**row, "lake_file": self.storage.relative(path), "lake_row": i}
                                   for i, row in enumerate(rows.to_pylist())]
        publish_failures = 0
        if to_publish:
            publish_failures = self._publish(to_publish)
        if item_records.num_rows:
            current = self.items if self.items is not None else read_items(self.storage)
            self.items = merge_items(current, item_rows(item_records))
            self.storage.write_parquet(self.layout.items, self.items, durable=False)
        self.storage.sync()  # everything the ledger will vouch for is on disk before the ledger

        self.faults.hit("before_ledger")
        offsets = {topic: dict(parts) for topic, parts in self.ledger.offsets.items()}
        for (topic, part), (_, stop) in covered.items():
            offsets.setdefault(topic, {})[part] = stop
        totals = Counter(self.ledger.totals)
        totals.update({"events": events.num_rows, "dead_letters": dead_letters.num_rows,
                       "item_records": item_records.num_rows})
        gaps = [{"topic": t, "partition": p, "start": lo + self.ledger.base(t, p), "end": hi + self.ledger.base(t, p),
                 "detected_at_ms": now} for (t, p), (lo, hi) in sorted(self._gaps.items()) if (t, p) in covered]
        gap_counts: Counter[str] = Counter()
        for gap in gaps:
            gap_counts[gap["topic"]] += gap["end"] - gap["start"]
        totals.update({"retention_gap_records": sum(gap_counts.values())})
        generation = self._lease.generation if self._lease is not None else 0
        ledger = replace(self.ledger, offsets=offsets, batches=self.ledger.batches + 1, totals=dict(totals),
                         gaps=[*self.ledger.gaps, *gaps], topic_ids=dict(self._topic_ids),
                         writer_generation=generation)
        if self._lease is not None:  # a fenced writer never commits
            self._lease.check(load_ledger(self.storage).writer_generation)
        save_ledger(self.storage, ledger)
        self.ledger = ledger  # only now: until the ledger is on disk, the batch did not happen
        self.event_ids.update(events.column("event_id").to_pylist())
        self.faults.hit("after_ledger")
        advanced = sum(stop - start for start, stop in covered.values())
        kinds = Counter(zip(dead_letters.column("topic").to_pylist(),
                            dead_letters.column("reason_kind").to_pylist(), strict=True))
        lag = self._lag(highs)
        return BatchResult(records=validated.num_rows, advanced=advanced, events=events.num_rows,
                           dead_letters=dead_letters.num_rows,
                           items=item_records.num_rows, caught_up=not any(lag.values()), lag=lag,
                           dead_letter_kinds=dict(kinds), files=files,
                           dead_letter_publish_failures=publish_failures, retention_gaps=dict(gap_counts))

    def _publish(self, rows: list[dict[str, Any]]) -> int:
        """Copy dead letters to the topic; a failure of any kind is counted and logged, never fatal."""
        try:
            if self._publisher is None:
                self._publisher = DeadLetterPublisher(self.kafka, self.settings)
            return self._publisher.publish(rows)
        except Exception:
            log.exception("publishing %d dead letters to %s failed; they are in the lake", len(rows),
                          self.kafka.dead_letter_topic)
            return len(rows)

    def _event_files(self, events: pa.Table, covered: dict[tuple[str, int], tuple[int, int]], now: int
                     ) -> list[tuple[str, pa.Table]]:
        """One file per (partition, event date), named by the partition's covered range."""
        if events.num_rows == 0:
            return []
        table = pa.table({
            **{name: events.column(name) for name in EVENT_SCHEMA.names if name != "ingest_ts"},
            "ingest_ts": pa.array(np.full(events.num_rows, now, dtype=np.int64)),
        }).select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        dates = pc.strftime(pc.cast(table.column("ts"), pa.timestamp("ms")), format="%Y-%m-%d")
        order = pc.sort_indices(pa.table({"p": table.column("partition"), "d": dates, "o": table.column("offset")}),
                                sort_keys=[("p", "ascending"), ("d", "ascending"), ("o", "ascending")])
        table, dates = table.take(order), pc.take(dates, order)
        parts = table.column("partition").to_numpy()
        codes = pc.dictionary_encode(dates).combine_chunks().indices.to_numpy()
        # contiguous runs of equal (partition, date) after the sort
        change = (parts[1:] != parts[:-1]) | (codes[1:] != codes[:-1])
        starts = [0, *(np.flatnonzero(change) + 1).tolist()]
        files = []
        for lo, hi in zip(starts, [*starts[1:], len(parts)], strict=True):
            part, date = int(parts[lo]), dates[lo].as_py()
            start, stop = covered[(self.kafka.events_topic, part)]
            files.append((self.layout.event_file(date, part, start, stop), table.slice(lo, hi - lo)))
        return files

    def _lag(self, highs: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        return {(t, p): max(0, high - ((self.ledger.next_offset(t, p) or 0) - self.ledger.base(t, p)))
                for (t, p), high in highs.items()}


def settle(validated: pa.Table, todo: list[PartitionRange], delivered: dict[tuple[str, int], int] | None = None
           ) -> tuple[dict[tuple[str, int], tuple[int, int]], pa.Table]:
    """Keep the records inside the planned ranges; per partition, the range they actually cover.

    The covered range ends after the greatest offset seen, or at the reader's delivered end if that
    is further (transaction markers and aborted records after the last record), never at the
    planned end: a read may stop early on its timeout. A partition that got nowhere is not covered.
    """
    topic, partition, offset = (validated.column(c) for c in ("topic", "partition", "offset"))
    keep = None
    covered: dict[tuple[str, int], tuple[int, int]] = {}
    for r in todo:
        mask = pc.and_(pc.and_(pc.equal(topic, r.topic), pc.equal(partition, r.partition)),
                       pc.and_(pc.greater_equal(offset, r.start), pc.less(offset, r.end)))
        seen = pc.max(pc.filter(offset, mask)).as_py()
        stop = r.start if seen is None else seen + 1
        stop = max(stop, min(r.end, (delivered or {}).get((r.topic, r.partition), r.start)))
        if stop > r.start:
            covered[(r.topic, r.partition)] = (r.start, stop)
        keep = mask if keep is None else pc.or_(keep, mask)
    validated = validated.filter(keep) if keep is not None else validated.slice(0, 0)
    return covered, validated.sort_by([("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")])


def _read_and_validate(bootstrap_servers: str, options: dict[str, Any], topic: str, partition: int, start: int,
                       end: int, timeout_s: float, kwargs: dict[str, Any]) -> tuple[pa.Table, int]:
    """The Ray task of one partition range: committed records, validated, and the delivered end."""
    raw, position = read_partition(bootstrap_servers, options, topic, partition, start, end, timeout_s)
    return validate_records(raw, **kwargs), position


def _dead_letter_table(rejected: pa.Table, now: int) -> pa.Table:
    return pa.table({
        "topic": rejected.column("topic"),
        "partition": rejected.column("partition"),
        "offset": rejected.column("offset"),
        "kafka_ts": rejected.column("kafka_ts"),
        "reason": rejected.column("reason"),
        "reason_kind": rejected.column("reason_kind"),
        "key": rejected.column("key"),
        "value": rejected.column("raw"),
        "ingest_ts": pa.array([now] * rejected.num_rows, pa.int64()),
    }, schema=DEAD_LETTER_SCHEMA).sort_by([("topic", "ascending"), ("partition", "ascending"),
                                          ("offset", "ascending")])
