"""The columnar fast path of `validate_records` against the per-record reference path, row for row.

The fast path (Arrow's JSON reader + vectorised checks) may only accept records the reference path
accepts, with the same values; everything else it hands to the reference path, so rejects keep
their reason text and reason_kind. Each block below mixes canonical events (which the fast path
must take) with every reject kind, unicode, edge numbers, extra fields and mutated bytes.
"""

from __future__ import annotations

import json
import math
import random
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from precise.events.schema import DEFAULT_ACTIONS, BehaviorEvent
from precise.ingest.validate import REASON_KINDS, _fast_events, validate_records, validate_records_per_record

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000
BASE = {"event_id": "e", "user_id": "u1", "item_id": "i1", "scene": "family", "action": "rate",
        "ts": 1_700_000_000_000, "value": 4.0}
OPTIONS = {"events_topic": "ev", "items_topic": "it", "allowed_actions": DEFAULT_ACTIONS, "max_payload_bytes": 1_000}


def canonical(n: int, **changes: object) -> bytes:
    """The producer's shape (compact, raw UTF-8, no null value), valid or not."""
    event = {**BASE, "event_id": f"e{n}", **changes}
    return json.dumps({k: v for k, v in event.items() if v is not None}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def dumps(n: int, ascii_only: bool = False, **changes: object) -> bytes:
    event = {**BASE, "event_id": f"d{n}", **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}, ensure_ascii=ascii_only).encode()


def _block(records: list[tuple[str, bytes | None]], kafka_ts: int = NOW_MS) -> pa.Table:
    n = len(records)
    return pa.table({
        "offset": pa.array(range(n), pa.int64()),
        "key": pa.array([b"k"] * n, pa.binary()),
        "value": pa.array([v for _, v in records], pa.binary()),
        "topic": pa.array([t for t, _ in records], pa.string()),
        "partition": pa.array([0] * n, pa.int32()),
        "timestamp": pa.array([kafka_ts] * n, pa.int64()),
    })


def _rows(table: pa.Table) -> list[dict]:
    """Rows with NaN made comparable (NaN != NaN)."""
    return [{k: ("NaN" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in table.to_pylist()]


def _assert_same(block: pa.Table, **options: object) -> list[dict]:
    kwargs = {**OPTIONS, **options}
    fast, reference = validate_records(block, **kwargs), validate_records_per_record(block, **kwargs)
    assert fast.schema == reference.schema
    got, want = _rows(fast), _rows(reference)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, (i, block.column("value")[i].as_py(), a, b)
    return want


def _accepted_fast(block: pa.Table) -> set[int]:
    values = block.column("value").combine_chunks()
    candidates = pc.fill_null(pc.equal(block.column("topic"), "ev"), False).to_numpy(zero_copy_only=False)
    index, _ = _fast_events(values, block.column("timestamp"), candidates, DEFAULT_ACTIONS, float(DAY_MS))
    return set(index.tolist())


MIXED: list[tuple[str, bytes | None]] = [
    # canonical (the fast path's business)
    ("ev", canonical(0)), ("ev", canonical(1, value=None)), ("ev", canonical(2, user_id="ユーザー", scene="cafés ☕")),
    ("ev", canonical(3, item_id="x" * 512)), ("ev", canonical(4, value=-0.0)), ("ev", canonical(5, value=1e308)),
    ("ev", canonical(6, value=5e-324)), ("ev", canonical(7, ts=1)), ("ev", canonical(8, value=0.1 + 0.2)),
    ("ev", canonical(9, user_id="\u3000x")), ("ev", canonical(10, scene="a\x7f")), ("ev", canonical(11, ts=NOW_MS)),
    # valid, but not canonical: spaces, escapes, extra fields, int value, null value, key order
    ("ev", dumps(0)), ("ev", dumps(1, ascii_only=True, user_id="ünï")), ("ev", dumps(2, value=...)),
    ("ev", dumps(3, value=None)), ("ev", dumps(4, value=3)), ("ev", dumps(5, value=2**53 + 1)),
    ("ev", dumps(6, extra={"a": [1, None]})), ("ev", dumps(7, foo=None)), ("ev", dumps(8, foo="bar")),
    ("ev", dumps(9, scene='say "hi"')), ("ev", b'{"ts":1700000000000,"action":"like","scene":"s","item_id":"i",'
                                               b'"user_id":"u","event_id":"ord"}'),
    ("ev", b'\t{"event_id":"ws","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5} '),
    ("ev", b'{"event_id":"nl","user_id":"u",\n"item_id":"i","scene":"s","action":"like","ts":5}'),
    ("ev", b'{"event_id":"nan","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5,"value":NaN}'),
    ("ev", b'{"event_id":"inf","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5,"value":-Infinity}'),
    ("ev", b'{"event_id":"big","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5,"value":1E400}'),
    ("ev", canonical(12, ts=NOW_MS + DAY_MS - 300)),  # within the margin: decided per record
    # rejects of every kind validate_records gives
    ("ev", None), ("ev", dumps(10, padding="x" * 1_000)), ("ev", b'{"event_id":"\xff\xfe"}'),
    ("ev", b'{"event_id":"sur\xed\xa0\x80","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5}'),
    ("ev", b'{"event_id": "e1", '), ("ev", b'{"event_id":"a","user_id":"u","item_id":"i","scene":"s",'
                                          b'"action":"like","ts":5}}'),
    ("ev", b'{"event_id":"a","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5,}'),
    ("ev", b'{"event_id":"a","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5}'
           b'{"event_id":"b","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5}'),
    ("ev", b"[1, 2, 3]"), ("ev", b'"text"'), ("ev", b"null"), ("ev", b"{}"),
    ("ev", dumps(11, item_id=...)), ("ev", dumps(12, ts=...)), ("ev", dumps(13, user_id=None)),
    ("ev", dumps(14, user_id=7)), ("ev", dumps(15, ts="1700000000000")), ("ev", dumps(16, ts=1.0)),
    ("ev", dumps(17, ts=True)), ("ev", dumps(18, value="4")), ("ev", dumps(19, value=True)),
    ("ev", dumps(20, value=[1])), ("ev", dumps(21, scene={"a": 1})), ("ev", b'{"event_id":"e","user_id":"u",'
                                                                          b'"item_id":"i","scene":"s","action":"like","ts":1e3}'),
    ("ev", dumps(22, user_id="  ")), ("ev", dumps(23, scene="")), ("ev", dumps(24, scene="\u3000\xa0")),
    ("ev", canonical(13, user_id="\u2003")), ("ev", dumps(25, item_id="i\u00001")),
    ("ev", dumps(26, ts=-5)), ("ev", dumps(27, ts=0)), ("ev", b'{"event_id":"z","user_id":"u","item_id":"i",'
                                                            b'"scene":"s","action":"like","ts":-0}'),
    ("ev", canonical(14, ts=NOW_MS + 3 * DAY_MS)), ("ev", dumps(28, ts=2**63 - 1)), ("ev", dumps(29, ts=2**63)),
    ("ev", dumps(30, action="teleport")), ("ev", canonical(15, action="x" * 5)),
    ("ev", dumps(31, event_id="x" * 513)), ("ev", dumps(32, scene="é" * 513)),
    ("ev", b'{"event_id":"a","event_id":"b","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5}'),
    ("ev", b'{"event_id":"a","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5,"ts":6}'),
    ("ev", b'{"event_id":"c","user_id":"u","item_id":"i","scene":"s","action":"like","ts":5 /* x */}'),
    # items and another topic
    ("it", json.dumps({"item_id": "i1", "text": "Toy Story", "created_ts": 1}).encode()), ("it", None),
    ("it", b'{"item_id": "i3"}'), ("other", canonical(16)),
]
assert canonical(0) == BehaviorEvent.model_validate({**BASE, "event_id": "e0"}).to_json_bytes()
_SHAPE = b'{"event_id":"n","user_id":"u","item_id":"i","scene":"s","action":"like","ts":'
MIXED += [("ev", _SHAPE + ts + b"}") for ts in (b"+5", b".5", b"5.", b"0x10", b"Infinity", b"1_000", b"5e0",
                                               b"9223372036854775807", b"1700000000000.0")]
MIXED += [("ev", _SHAPE + b'5,"value":' + value + b"}") for value in (
    b"1e30", b"100000000000000000000000000000", b"-0", b"1.7976931348623157e308", b"2.2250738585072014e-308",
    b"0.1e-400", b"+1", b"1.", b".1", b"01", b"1e", b"true", b"null", b"Infinity", b"nan")]
MUST_BE_FAST = {i for i, (topic, raw) in enumerate(MIXED[:12]) if topic == "ev"}


def test_fast_path_matches_the_per_record_path_on_a_mixed_block():
    block = _block(MIXED)
    rows = _assert_same(block)
    kinds = {row["reason_kind"] for row in rows} - {None}
    assert kinds == set(REASON_KINDS) - {"duplicate_event_id"}  # duplicates are the driver's (batch.py)
    assert MUST_BE_FAST <= _accepted_fast(block)
    assert all(rows[i]["reason"] is None for i in MUST_BE_FAST)
    # shuffled, and in blocks of both sizes around the split-on-error threshold
    rng = random.Random(7)
    shuffled = MIXED * 3
    rng.shuffle(shuffled)
    _assert_same(_block(shuffled))
    _assert_same(_block(shuffled), max_event_time_ahead_s=0.0)


def test_fast_path_matches_on_mutated_bytes():
    """Random byte edits of canonical records: whatever they turn into, both paths agree."""
    rng = random.Random(17)
    alphabet = b'{}[]",:\\ 0123456789.eE-+nulltruefalseNaN\x00\n\xff\xc3\xa9u'
    records: list[tuple[str, bytes | None]] = []
    mutated = set()
    for n in range(3_000):
        raw = bytearray(canonical(n, value=rng.choice([None, 4.0, 1.5e-7, -3.0])))
        if rng.random() < 0.15:  # a block of mostly good records, as in production
            mutated.add(n)
        for _ in range(rng.choice([1, 1, 2, 3]) if n in mutated else 0):
            at = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[at] = rng.choice(alphabet)
            elif op < 0.7:
                del raw[at]
            else:
                raw.insert(at, rng.choice(alphabet))
        records.append(("ev", bytes(raw)))
    block = _block(records)
    rows = _assert_same(block)
    accepted = sum(row["reason"] is None for row in rows)
    fast = _accepted_fast(block)
    # the comparison covered the fast path, not only the fallback, mutated records included
    assert len(fast) > accepted // 2 and len(fast & mutated) > 20, (len(fast), accepted, len(fast & mutated))
    assert fast <= {i for i, row in enumerate(rows) if row["reason"] is None}


def test_fast_path_keeps_the_block_order_and_columns():
    records = [("ev", canonical(i)) if i % 3 else ("ev", dumps(i, ts=-1)) for i in range(300)]
    out = validate_records(_block(records), **OPTIONS)
    assert out.column("offset").to_pylist() == list(range(300))
    reasons = np.array([r is None for r in out.column("reason").to_pylist()])
    assert reasons.tolist() == [bool(i % 3) for i in range(300)]
    assert out.column("event_id").to_pylist()[1] == "e1" and out.column("ts").to_pylist()[1] == BASE["ts"]


def test_fast_path_agrees_at_the_event_time_limit():
    """The limit is the later of the clock and the record's Kafka timestamp, plus the allowance; a
    broker timestamp far ahead of this clock makes it exact, so each side of it is tested."""
    stamped = NOW_MS + 10 * DAY_MS
    limit = stamped + DAY_MS
    records = [("ev", canonical(i, ts=ts)) for i, ts in enumerate(
        [limit - 5_000, limit - 1_001, limit - 999, limit - 1, limit, limit + 1, limit + 1_000, limit + 5_000])]
    block = _block(records * 4, kafka_ts=stamped)
    rows = _assert_same(block)
    assert [row["reason"] is None for row in rows[:8]] == [True] * 5 + [False] * 3
    assert {0, 1} <= _accepted_fast(block)
