"""`ingest.field_mapping`: your record schema -> the event contract, before the contract's checks."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from precise.config import ConfigError, FieldMapping, PreciseConfig, load_config
from precise.events.mapping import derived_event_id, map_event
from precise.events.schema import InvalidEventError, parse_event
from precise.ingest.validate import validate_records

MAPPING = {"fields": {"user_id": "who.id", "item_id": "movie", "ts": "rated_at", "value": "stars",
                      "action": "kind"},
           "constants": {"scene": "movies"},
           "values": {"action": {"rated": "rate", "1": "like"}},
           "timestamp": "s"}


def test_map_event_moves_converts_and_keeps_the_rest():
    mapping = FieldMapping.model_validate(MAPPING)
    record = {"who": {"id": 7, "country": "fr"}, "movie": 42, "rated_at": 881250949, "stars": 4, "kind": "rated",
              "device": "tv"}
    event = parse_event(map_event(json.dumps(record).encode(), mapping))
    assert (event.user_id, event.item_id, event.scene, event.action) == ("7", "42", "movies", "rate")
    assert event.ts == 881_250_949_000 and event.value == 4
    assert event.event_id == derived_event_id(event.model_dump())  # the same content, the same id
    assert event.model_extra == {"device": "tv"}  # unmapped top-level fields are kept ("who" was used)
    # a value table key that YAML read as an int, and ISO times
    iso = FieldMapping.model_validate({**MAPPING, "values": {"action": {1: "like"}}, "timestamp": "iso"})
    event = parse_event(map_event({**record, "kind": 1, "rated_at": "1997-12-04T15:55:49"}, iso))
    assert event.action == "like" and event.ts == 881_250_949_000


@pytest.mark.parametrize(("change", "reason"), [
    ({"movie": None}, "item_id: Field required (mapped from 'movie', absent in the record)"),
    ({"who": {"name": "x"}}, "user_id: Field required (mapped from 'who.id', absent in the record)"),
    ({"rated_at": "yesterday"}, "ts: Input should be a valid integer"),
    ({"kind": "skipped"}, "action: 'skipped' is not one of"),
])
def test_a_record_that_does_not_fit_is_rejected_naming_the_field(change, reason):
    mapping = FieldMapping.model_validate(MAPPING)
    record = {"who": {"id": 7}, "movie": 42, "rated_at": 881250949, "stars": 4, "kind": "rated", **change}
    with pytest.raises(InvalidEventError) as err:
        parse_event(map_event(record, mapping))
    assert reason in err.value.reason


def test_config_refuses_an_incomplete_or_unknown_mapping(tmp_path):
    cases = {
        "the mapping gives no source for the contract fields ['scene']": {"fields": {"user_id": "u", "item_id": "i",
                                                                                     "action": "a", "ts": "t"}},
        "['rating'] are not event contract fields": {**MAPPING, "fields": {**MAPPING["fields"], "rating": "r"}},
        "ts (the event time) cannot be a constant": {**MAPPING, "fields": {"user_id": "u", "item_id": "i",
                                                                           "action": "a"},
                                                     "constants": {"scene": "s", "ts": 5}},
    }
    for message, mapping in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(json.dumps({"ingest": {"field_mapping": mapping}}))
        with pytest.raises(ConfigError, match="ingest.field_mapping") as err:
            load_config(path)
        assert message in str(err.value)
    assert PreciseConfig().ingest.field_mapping is None  # the contract as it is, by default


def test_validate_records_applies_the_mapping_before_the_contract():
    mapping = FieldMapping.model_validate(MAPPING)
    good = {"who": {"id": 1}, "movie": "m1", "rated_at": 881250949, "stars": 5, "kind": "rated"}
    rows = [good, {**good, "movie": None}, {**good, "who": {"id": 2}, "rated_at": -3}, b"not json"]
    values = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    batch = pa.table({"topic": ["ev"] * 4, "partition": pa.array([0] * 4, pa.int32()),
                      "offset": pa.array(range(4), pa.int64()), "timestamp": pa.array([0] * 4, pa.int64()),
                      "key": pa.array([None] * 4, pa.binary()), "value": pa.array(values, pa.binary())})
    out = validate_records(batch, events_topic="ev", items_topic="it", allowed_actions=("rate", "like"),
                           max_payload_bytes=4096, field_mapping=mapping).to_pylist()
    assert [r["reason_kind"] for r in out] == [None, "missing_field", "invalid_timestamp", "invalid_json"]
    assert (out[0]["user_id"], out[0]["item_id"], out[0]["ts"]) == ("1", "m1", 881_250_949_000)
    assert out[1]["raw"] == values[1]  # the dead letter keeps the record as it came


def test_item_mapping_needs_one_text_source_and_an_id():
    from precise.config import ItemFieldMapping

    with pytest.raises(ValueError, match="exactly one source"):
        ItemFieldMapping(fields={"item_id": "id", "text": "title"}, text_template="{title}")
    with pytest.raises(ValueError, match="fields.item_id is required"):
        ItemFieldMapping(fields={"text": "title"})
    with pytest.raises(ValueError, match=r"\['price'\] are not item contract fields"):
        ItemFieldMapping(fields={"item_id": "id", "text": "t", "price": "p"})
