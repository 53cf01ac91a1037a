"""Pure pieces of the ingest stage: validation, lake names and ledger, storage, items, sequences."""

from __future__ import annotations

import json
import random
import time

import pyarrow as pa
import pytest

from precise.config import ConfigError, PreciseConfig, load_config
from precise.events.schema import DEFAULT_ACTIONS, InvalidEventError, parse_event
from precise.ingest.batch import PartitionRange, settle
from precise.ingest.faults import Faults
from precise.ingest.items import item_rows, merge_items
from precise.ingest.sequences import collapse, explode, finish, select_events
from precise.ingest.validate import REASON_KINDS, parse_event_fast, reason_kind, validate_records
from precise.store.files import TMP_PREFIX, Files
from precise.store.lake import (
    ITEM_SCHEMA,
    Ledger,
    load_ledger,
    parse_range_file_name,
    range_file_name,
    save_ledger,
    split_committed,
)

NOW_MS = int(time.time() * 1000)
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "scene": "family", "action": "rate",
        "ts": 1_700_000_000_000, "value": 4.0}


def _kafka_table(records: list[tuple[str, bytes | None, bytes | None]]) -> pa.Table:
    """Records shaped like ray.data.read_kafka's output."""
    n = len(records)
    return pa.table({
        "offset": pa.array(range(n), pa.int64()),
        "key": pa.array([k for _, k, _ in records], pa.binary()),
        "value": pa.array([v for _, _, v in records], pa.binary()),
        "topic": pa.array([t for t, _, _ in records], pa.string()),
        "partition": pa.array([0] * n, pa.int32()),
        "timestamp": pa.array([NOW_MS] * n, pa.int64()),
    })


def _event(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


BAD_EVENTS = {
    "invalid_json": b'{"event_id": "e1", ',
    "not_utf8": b'{"event_id": "\xff\xfe"}',
    "not_object": b"[1, 2, 3]",
    "missing_field": _event(item_id=...),
    "wrong_type": _event(user_id=7),
    "empty_id": _event(user_id="  "),
    "null_bytes": _event(item_id="i\u00001"),
    "invalid_timestamp": _event(ts=-5),
    "action_not_allowed": _event(action="teleport"),
    "oversized": _event(padding="x" * 2_000),
    "empty": None,
}


def test_validate_records_classifies_every_kind_and_keeps_valid_fields():
    records = [("ev", b"u1", _event(extra_field={"a": 1}))]
    records += [("ev", b"k", raw) for raw in BAD_EVENTS.values()]
    records += [("ev", b"k", _event(ts=NOW_MS + 3 * 24 * 3600 * 1000))]  # far future
    records += [("it", b"i1", json.dumps({"item_id": "i1", "text": "Toy Story", "created_ts": 1}).encode()),
                ("it", b"i2", None),  # tombstone
                ("it", b"i3", b'{"item_id": "i3"}')]
    out = validate_records(_kafka_table(records), events_topic="ev", items_topic="it",
                           allowed_actions=DEFAULT_ACTIONS, max_payload_bytes=1_000).to_pylist()
    valid = out[0]
    assert valid["reason"] is None and valid["event_id"] == "e1" and valid["value"] == 4.0
    assert json.loads(valid["extra"]) == {"extra_field": {"a": 1}}
    kinds = [row["reason_kind"] for row in out[1:1 + len(BAD_EVENTS)]]
    assert kinds == list(BAD_EVENTS)
    assert all(row["reason"] and row["raw"] == raw for row, raw in zip(out[1:], BAD_EVENTS.values(), strict=False))
    assert out[1 + len(BAD_EVENTS)]["reason_kind"] == "invalid_timestamp"
    item, tombstone, bad_item = out[-3:]
    assert item["reason"] is None and item["text"] == "Toy Story" and item["deleted"] is False
    assert tombstone["reason"] is None and tombstone["item_id"] == "i2" and tombstone["deleted"] is True
    assert bad_item["reason_kind"] == "missing_field"
    assert set(kinds) <= set(REASON_KINDS)


@pytest.mark.parametrize(("changes", "kind"), [
    ({"ts": "1700000000000"}, "wrong_type"), ({"ts": 1.5}, "wrong_type"), ({"ts": 0}, "invalid_timestamp"),
    ({"scene": ""}, "empty_id"), ({"value": "high"}, "wrong_type"), ({"event_id": "x" * 600}, "invalid_field"),
])
def test_reason_kinds_of_field_errors(changes, kind):
    with pytest.raises(InvalidEventError) as error:
        parse_event(_event(**changes), DEFAULT_ACTIONS)
    assert reason_kind(error.value.reason) == kind, error.value.reason


@pytest.mark.parametrize("raw", [_event(), _event(value=...), _event(value=3), _event(extra=[1, None]),
                                 b'{"event_id":"a","user_id":"u","item_id":"i","scene":"s","action":"like",'
                                 b'"ts":1700000000000,"value":NaN}',
                                 *[v for v in BAD_EVENTS.values() if v is not None]])
def test_fast_parse_agrees_with_parse_event(raw):
    try:
        expected = parse_event(raw, DEFAULT_ACTIONS)
    except InvalidEventError as exc:
        with pytest.raises(InvalidEventError) as got:
            parse_event_fast(raw, DEFAULT_ACTIONS)
        assert got.value.reason == exc.reason
        return
    event = parse_event_fast(raw, DEFAULT_ACTIONS)
    assert event.model_dump() == expected.model_dump() or (
        event.value != event.value and expected.value != expected.value)  # NaN != NaN


def test_range_file_names_round_trip_and_commit_split():
    name = range_file_name(3, 120, 4_500)
    assert name == "p0003-000000000120-000000004500.parquet"
    assert parse_range_file_name(f"/lake/events/date=2020-01-01/{name}") == (3, 120, 4_500)
    assert parse_range_file_name("/lake/events/date=2020-01-01/.tmp-abc-" + name) is None
    files = [f"/x/{range_file_name(0, 0, 10)}", f"/x/{range_file_name(0, 10, 20)}", f"/x/{range_file_name(1, 0, 5)}"]
    committed, uncommitted = split_committed(files, {0: 10})
    assert committed == files[:1] and uncommitted == files[1:]


def test_ledger_round_trip(tmp_path):
    storage = Files(str(tmp_path))
    assert load_ledger(storage) == Ledger()
    ledger = Ledger(offsets={"ev": {0: 5, 2: 7}}, events_topic="ev", items_topic="it", batches=2,
                    totals={"events": 12})
    save_ledger(storage, ledger)
    assert load_ledger(storage).offsets == {"ev": {0: 5, 2: 7}}
    assert load_ledger(storage).totals == {"events": 12}
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_storage_writes_whole_files_and_replaces(tmp_path):
    storage = Files(str(tmp_path / "root"))
    path = storage.path("a", "b.parquet")
    storage.write_parquet(path, pa.table({"x": [1, 2]}), durable=False)
    storage.write_parquet(path, pa.table({"x": [3]}))
    storage.sync()
    assert pa.parquet.read_table(path).column("x").to_pylist() == [3]
    assert storage.list_files(storage.path("a")) == [path]
    assert storage.list_files(storage.path("missing")) == []
    with storage.lock(storage.path("lock")), pytest.raises(RuntimeError, match="held by another process"):
        with storage.lock(storage.path("lock")):
            pass


def test_storage_on_an_fsspec_uri():
    storage = Files("memory://precise-test-lake")
    assert not storage.local
    storage.write_bytes(storage.path("lake", "_ledger.json"), b"{}")
    assert storage.read_bytes(storage.path("lake", "_ledger.json")) == b"{}"
    assert storage.read_bytes(storage.path("nope")) is None


def _items(rows: list[dict]) -> pa.Table:
    base = {"text": None, "scene": None, "created_ts": 1, "extra": None, "deleted": False, "partition": 0}
    table = pa.Table.from_pylist([{**base, **r} for r in rows])
    return item_rows(table.append_column("kafka_ts", table.column("ts")).drop_columns(["ts"]))


def test_item_merge_is_idempotent_and_order_free():
    a = _items([{"item_id": "i1", "text": "v1", "ts": 10, "offset": 0},
                {"item_id": "i2", "text": "x", "ts": 11, "offset": 1}])
    b = _items([{"item_id": "i1", "text": "v2", "ts": 20, "offset": 2},
                {"item_id": "i2", "ts": 21, "offset": 3, "deleted": True}])
    empty = ITEM_SCHEMA.empty_table()
    once = merge_items(merge_items(empty, a), b)
    assert once.equals(merge_items(merge_items(empty, b), a))
    assert once.equals(merge_items(once, b)) and once.equals(merge_items(once, a))
    rows = {r["item_id"]: r for r in once.to_pylist()}
    assert rows["i1"]["text"] == "v2" and rows["i1"]["first_seen_ts"] == 10 and rows["i1"]["updated_ts"] == 20
    assert rows["i2"]["deleted"] is True and rows["i2"]["text"] == "x"  # a tombstone keeps the last text


def _events(n: int, users: int = 5, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    return pa.table({"user_id": [f"u{rng.randrange(users)}" for _ in range(n)],
                     "item_id": [f"i{rng.randrange(50)}" for _ in range(n)],
                     "ts": [rng.randrange(1_000, 1_050) for _ in range(n)],  # many ties
                     "offset": [rng.randrange(10_000) for _ in range(n)],
                     "event_id": [f"e{i:05d}" for i in range(n)]})


def test_collapse_orders_by_time_offset_and_id_and_keeps_the_most_recent():
    events = _events(300)
    seqs = {r["user_id"]: r for r in collapse(events, max_len=10).to_pylist()}
    for user, row in seqs.items():
        mine = sorted((r for r in events.to_pylist() if r["user_id"] == user),
                      key=lambda r: (r["ts"], r["offset"], r["event_id"]))
        assert row["event_ids"] == [r["event_id"] for r in mine][-10:]
        assert row["item_ids"] == [r["item_id"] for r in mine][-10:]


def test_incremental_merge_equals_a_full_build():
    events = _events(2_000, users=30, seed=1)
    for cut in (1, 700, 1_999):
        first, rest = events.slice(0, cut), events.slice(cut)
        merged = collapse(pa.concat_tables([explode(collapse(first, 25)), rest]), 25)
        assert merged.sort_by("user_id").equals(collapse(events, 25).sort_by("user_id"))
        again = collapse(pa.concat_tables([explode(merged), rest]), 25)  # a re-run merges the same events
        assert again.sort_by("user_id").equals(merged.sort_by("user_id"))


def test_sequences_are_ordered_by_time_then_arrival():
    # ties in ts keep the order the events were produced in (their offsets), whatever the ids
    seqs = finish(collapse(pa.table({"user_id": ["a", "a", "a", "b", "b"], "item_id": ["3", "1", "2", "5", "4"],
                                     "ts": [2, 1, 2, 1, 1], "offset": [7, 9, 8, 1, 2],
                                     "event_id": ["x", "z", "y", "v", "w"]}), 10))
    a, b = seqs.to_pylist()
    assert (a["item_ids"], a["ts"], a["offsets"], a["length"]) == (["1", "3", "2"], [1, 2, 2], [9, 7, 8], 3)
    assert (b["item_ids"], b["length"]) == (["5", "4"], 2)


def test_select_events_by_action_and_scene():
    batch = pa.table({"user_id": ["u"] * 4, "item_id": ["1", "2", "3", "4"], "ts": [1, 2, 3, 4],
                      "offset": [1, 2, 3, 4], "event_id": ["a", "b", "c", "d"],
                      "action": ["rate", "like", "rate", "rate"],
                      "scene": ["family", "family", "drama", "family"]})
    assert select_events(batch, ["rate"], ["family"]).column("item_id").to_pylist() == ["1", "4"]
    assert select_events(batch, None, None).num_rows == 4


def test_fault_spec_is_validated():
    assert Faults("").point is None
    assert (Faults("mid_write:3").point, Faults("mid_write:3").target) == ("mid_write", 3)
    with pytest.raises(ValueError, match="PRECISE_INGEST_CRASH_AT"):
        Faults("sometimes")


def test_ingest_and_sequence_config(tmp_path):
    config = PreciseConfig()
    assert config.sequences.all_scene.actions == ["rate"]
    path = tmp_path / "c.yaml"
    path.write_text("sequences:\n  targets:\n    - name: all\n")
    with pytest.raises(ConfigError, match="sequence names must be unique"):
        load_config(path)
    path.write_text("ingest:\n  max_payload_bytes: 10\n")
    with pytest.raises(ConfigError, match="ingest.max_payload_bytes"):
        load_config(path)


def test_settle_covers_only_the_offsets_actually_read():
    rows = [("ev", 0, o) for o in (12, 10, 11, 14)] + [("ev", 0, 30), ("ev", 2, 0), ("it", 1, 7)]
    validated = pa.table({"topic": [t for t, _, _ in rows], "partition": pa.array([p for _, p, _ in rows], pa.int32()),
                          "offset": pa.array([o for _, _, o in rows], pa.int64())})
    planned = [PartitionRange("ev", 0, 10, 30),  # a read that timed out after offset 14
               PartitionRange("ev", 1, 0, 5),  # a read that returned nothing
               PartitionRange("it", 1, 7, 8)]
    covered, kept = settle(validated, planned)
    assert covered == {("ev", 0): (10, 15), ("it", 1): (7, 8)}
    assert list(zip(kept.column("topic").to_pylist(), kept.column("offset").to_pylist(), strict=True)) == [
        ("ev", 10), ("ev", 11), ("ev", 12), ("ev", 14), ("it", 7)]  # outside the plan: dropped, read again later


def test_event_time_allowance_is_configurable_and_uses_the_record_timestamp():
    """A worker with a slow clock must not dead-letter events the broker stamped recently."""
    day = 24 * 3600 * 1000
    table = _kafka_table([("ev", b"k", _event(event_id="ahead2d", ts=NOW_MS + 2 * day))])

    def kind(table: pa.Table, **kwargs: float) -> str | None:
        out = validate_records(table, events_topic="ev", items_topic="it", allowed_actions=DEFAULT_ACTIONS,
                               max_payload_bytes=1_000, **kwargs).to_pylist()
        return out[0]["reason_kind"]

    assert kind(table) == "invalid_timestamp"  # default allowance: one day
    assert kind(table, max_event_time_ahead_s=3 * 86_400) is None
    assert kind(table, max_event_time_ahead_s=0) == "invalid_timestamp"
    # the record's Kafka timestamp is 1.5 days ahead of this (slow) worker: the event is 0.5 day past it
    stamped = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                               pa.array([NOW_MS + int(1.5 * day)], pa.int64()))
    assert kind(stamped) is None
    assert PreciseConfig.model_validate({"ingest": {"max_event_time_ahead_s": 60}}).ingest.max_event_time_ahead_s == 60


def test_rewind_refuses_offsets_of_a_re_created_topics_earlier_incarnation(tmp_path):
    from precise.store.rewind import RewindError, rewind

    storage = Files(str(tmp_path))
    save_ledger(storage, Ledger(offsets={"ev": {0: 25}}, events_topic="ev", items_topic="it",
                                offset_base={"ev": {0: 10}}))
    with pytest.raises(RewindError, match="earlier incarnation"):
        rewind(storage, "ev", {0: 5})
    assert rewind(storage, "ev", {0: 12})["to"] == {"0": 12}
    ledger = load_ledger(storage)
    assert ledger.offsets == {"ev": {0: 12}} and ledger.base("ev", 0) == 10 and ledger.version == 2
