"""ML-100k through Kafka, the ingest job and the sequence builder, checked against pandas.

The stream arrives in two parts (70% of event time, then the rest), so the second build is the
incremental path: only users touched by the new events are rebuilt, and the result must still equal
a from-scratch pandas computation over the whole dataset.
"""

from __future__ import annotations

import pandas as pd
import pytest

from precise.config import PreciseConfig
from precise.data import load_movielens
from precise.data.movielens import EventDataset
from precise.events.replay import replay
from precise.ingest.job import IngestJob, connect_ray
from precise.store.lake import events_dataset, read_dead_letters, read_events, read_items
from precise.store.sequences import SEQUENCE_SCHEMA, read_sequences, sequences_dataset

pytestmark = pytest.mark.integration
MAX_LEN = 50
SPECS = {"all": (["rate"], None), "like": (["like"], None), "family": (["rate"], ["family"])}


@pytest.fixture(scope="module")
def ml100k() -> EventDataset:
    return load_movielens("ml-100k")


def pandas_sequences(events: pd.DataFrame, actions: list[str] | None, scenes: list[str] | None) -> pd.DataFrame:
    """The reference: per user, in event order (ts, then arrival: the Kafka offset), the last MAX_LEN.
    `events` are in replay order, so their row number orders a user's events as their offsets do."""
    keep = events.assign(offset=range(len(events)))
    if actions is not None:
        keep = keep[keep["action"].isin(actions)]
    if scenes is not None:
        keep = keep[keep["scene"].isin(scenes)]
    keep = keep.sort_values(["user_id", "ts", "offset", "event_id"])
    rows = []
    for user, group in keep.groupby("user_id"):
        items = group["item_id"].tolist()[-MAX_LEN:]
        rows.append({"user_id": user, "item_ids": items, "ts": group["ts"].tolist()[-MAX_LEN:]})
    return pd.DataFrame(rows).set_index("user_id")


def assert_sequences_equal(root: str, events: pd.DataFrame) -> None:
    for name, (actions, scenes) in SPECS.items():
        expected = pandas_sequences(events, actions, scenes)
        got = read_sequences(root, name).to_pandas().set_index("user_id")
        assert sorted(got.index) == sorted(expected.index), name
        got = got.loc[expected.index]
        for column in ("item_ids", "ts"):
            assert [list(v) for v in got[column]] == expected[column].tolist(), (name, column)
        assert (got["length"] == got["item_ids"].map(len)).all()


def test_ml100k_lake_items_and_sequences_match_pandas(kafka_config, ray_head, tmp_path, ml100k):
    root = str(tmp_path / "precise")
    config = PreciseConfig.model_validate({
        "kafka": kafka_config.model_dump(), "storage": {"root": root},
        "ingest": {"max_records_per_partition": 30_000},  # several batches per run
        "sequences": {"max_len": MAX_LEN, "buckets": 4,
                      "targets": [{"name": "like", "actions": ["like"]},
                                  {"name": "family", "scenes": ["family"], "actions": ["rate"]}]},
    })
    events = ml100k.events
    cutoff = int(events["ts"].quantile(0.7))
    first = EventDataset(ml100k.name, events[events["ts"] < cutoff].reset_index(drop=True), ml100k.items,
                         ml100k.num_ratings)
    replay(first, kafka_config, progress=False)
    connect_ray()

    summary = IngestJob(config).run_once()
    assert summary["events"] == len(first.events) and summary["dead_letters"] == 0
    assert summary["batches"] >= 2
    assert_sequences_equal(root, first.events)

    replay(ml100k, kafka_config, progress=False)  # resumes: sends the remaining 30%
    summary = IngestJob(config).run_once()
    assert summary["events"] == len(events) - len(first.events)

    lake = read_events(root).to_pandas().sort_values("event_id").reset_index(drop=True)
    expected = events.sort_values("event_id").reset_index(drop=True)
    assert len(lake) == len(expected) == 155_375
    for column in ("event_id", "user_id", "item_id", "scene", "action", "ts"):
        assert lake[column].tolist() == expected[column].tolist(), column
    assert lake["value"].tolist() == expected["value"].tolist()
    assert read_dead_letters(root).num_rows == 0

    items = read_items(root).to_pandas().set_index("item_id").sort_index()
    catalogue = ml100k.items.set_index("item_id").sort_index()
    assert items.index.tolist() == catalogue.index.tolist()
    assert items["text"].tolist() == catalogue["text"].tolist()
    assert items["created_ts"].tolist() == catalogue["created_ts"].tolist()
    assert not items["deleted"].any()

    assert_sequences_equal(root, events)
    # what training reads, through Ray Data
    assert events_dataset(root, columns=["event_id", "ts"]).count() == len(events)
    seqs = sequences_dataset(root, "like")
    assert seqs.count() == events.loc[events["action"] == "like", "user_id"].nunique()
    assert set(seqs.schema().names) == set(SEQUENCE_SCHEMA.names)
    rebuilt = {s["name"]: s for s in summary["sequences"]}
    second = events[events["ts"] >= cutoff]
    assert not rebuilt["all"]["full"]
    touched = second.loc[second["action"] == "rate", "user_id"].nunique()
    assert rebuilt["all"]["users_rebuilt"] == touched < rebuilt["all"]["users_total"] == events["user_id"].nunique()
