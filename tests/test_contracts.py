"""Event and item contracts: valid records pass, every kind of breach fails with a clear reason."""

import json
import time

import pytest

from precise.events import InvalidEventError, parse_event, parse_item

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "scene": "family", "action": "rate",
        "ts": 978_300_760_000, "value": 4}


def test_valid_event_keeps_extra_fields_and_round_trips():
    event = parse_event({**GOOD, "device": "ios"})
    assert event.model_extra == {"device": "ios"}
    assert json.loads(event.to_json_bytes())["device"] == "ios"
    assert parse_event(event.to_json_bytes()) == event


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"user_id": None}, "user_id"),
        ({"user_id": 42}, "user_id: Input should be a valid string"),
        ({"event_id": ""}, "event_id must be a non-empty string"),
        ({"item_id": "   "}, "item_id must be a non-empty string"),
        ({"ts": "978300760000"}, "ts: Input should be a valid integer"),
        ({"ts": -5}, "epoch milliseconds > 0"),
        ({"ts": int(time.time() * 1000) + 7 * 86_400_000}, "in the future"),
        ({"ts": 1.5}, "ts"),
        ({"value": "high"}, "value"),
        ({"action": "teleport"}, "is not one of"),
        ({"scene": "a\x00b"}, "null bytes"),
    ],
)
def test_invalid_events_are_rejected_with_the_field_named(patch, reason):
    with pytest.raises(InvalidEventError, match=reason.replace("(", r"\(")):
        parse_event({**GOOD, **patch})


def test_missing_fields_are_all_named():
    with pytest.raises(InvalidEventError) as err:
        parse_event({"event_id": "x"})
    for field in ("user_id", "item_id", "scene", "action", "ts"):
        assert field in err.value.reason


@pytest.mark.parametrize(("raw", "reason"), [(b"\xff\xfe", "not UTF-8"), (b"{nope", "invalid JSON"),
                                             (b"[1, 2]", "expected a JSON object")])
def test_raw_bytes_errors(raw, reason):
    with pytest.raises(InvalidEventError, match=reason):
        parse_event(raw)


def test_items():
    item = parse_item({"item_id": "i1", "text": "Toy Story (1995)", "created_ts": 978_300_760_000})
    assert item.scene is None
    with pytest.raises(InvalidEventError, match="text must be a non-empty string"):
        parse_item({"item_id": "i1", "text": "", "created_ts": 978_300_760_000})
