"""Importing an existing history (Parquet / CSV) into the lake: the same mapping, checks and dead letters
as ingest, exactly once; and training on an imported MovieLens history (the acceptance test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from precise.config import PreciseConfig
from precise.ingest.history import HistoryError, import_history
from precise.store.files import Files
from precise.store.lake import (
    IMPORT_PARTITION_BASE,
    Ledger,
    event_files,
    load_ledger,
    read_dead_letters,
    read_events,
)

REPO = Path(__file__).resolve().parents[1]
MAPPING = {"fields": {"user_id": "who.id", "item_id": "movie", "ts": "rated_at", "value": "stars"},
           "constants": {"scene": "movies", "action": "rate"}, "timestamp": "s"}


def _config(root: Path, mapping: dict | None = MAPPING, **sections: object) -> PreciseConfig:
    return PreciseConfig.model_validate({"storage": {"root": str(root)},
                                         "ingest": {"field_mapping": mapping}, **sections})


def _history(n: int, bad: dict[int, dict] | None = None) -> pa.Table:
    rows = [{"who": {"id": i % 17, "country": "fr"}, "movie": f"m{i % 23}", "rated_at": 881_250_000 + 60 * i,
             "stars": float(1 + i % 5)} for i in range(n)]
    for i, change in (bad or {}).items():
        rows[i] = {**rows[i], **change}
    return pa.Table.from_pylist(rows)


BAD = {3: {"movie": None}, 7: {"who": {"id": None, "country": "fr"}}, 11: {"rated_at": -5}}


def test_import_writes_lake_events_dead_letters_and_is_idempotent(tmp_path):
    source = tmp_path / "history.parquet"
    pq.write_table(_history(120, BAD), source)
    config = _config(tmp_path / "lake")

    first = import_history(config, source, batch_rows=50)  # three committed chunks
    assert (first["rows"], first["events"], first["dead_letters"]) == (120, 117, 3)
    assert first["partition"] == IMPORT_PARTITION_BASE and not first["already_imported"]
    events = read_events(config.storage.resolved_root())
    assert events.num_rows == 117 and len(set(events.column("event_id").to_pylist())) == 117
    row = events.filter(pa.compute.equal(events.column("offset"), 0)).to_pylist()[0]
    assert (row["user_id"], row["item_id"], row["scene"], row["action"], row["ts"], row["value"]) == \
        ("0", "m0", "movies", "rate", 881_250_000_000, 1.0)
    assert row["extra"] is None  # every field of the row was mapped
    dead = read_dead_letters(config.storage.resolved_root()).to_pylist()
    assert sorted(d["offset"] for d in dead) == [3, 7, 11]
    kinds = {d["offset"]: (d["reason_kind"], d["reason"]) for d in dead}
    assert kinds[3] == ("missing_field", "item_id: Field required (mapped from 'movie', absent in the record)")
    assert kinds[7][0] == "missing_field" and "'who.id'" in kinds[7][1]
    assert kinds[11][0] == "invalid_timestamp"
    assert json.loads(dead[0]["value"])["who"]["country"] == "fr"  # the row as it was, for a fix and re-import

    again = import_history(config, source)
    assert again["already_imported"] and read_events(config.storage.resolved_root()).num_rows == 117

    # the same events in another file (CSV, flat columns): none is added twice
    flat = _history(120, BAD).to_pandas()
    flat["user"] = [w["id"] for w in flat.pop("who")]
    csv_path = tmp_path / "history.csv"
    pacsv.write_csv(pa.Table.from_pandas(flat, preserve_index=False), csv_path)
    other = _config(tmp_path / "lake", {**MAPPING, "fields": {**MAPPING["fields"], "user_id": "user"}})
    second = import_history(other, csv_path)
    assert second["partition"] == IMPORT_PARTITION_BASE + 1 and second["events"] == 0
    lake = read_events(config.storage.resolved_root())
    assert lake.num_rows == 117
    dead = read_dead_letters(config.storage.resolved_root())
    assert dead.num_rows == 3 + 120
    assert pa.compute.sum(pa.compute.equal(dead.column("reason_kind"), "duplicate_event_id")).as_py() == 117
    imports = _ledger(config.storage.resolved_root()).imports
    assert [(e["name"], e["status"]) for e in imports] == [("history.parquet", "done"), ("history.csv", "done")]


def test_an_interrupted_import_resumes_without_duplicates(tmp_path, monkeypatch):
    source = tmp_path / "history.parquet"
    pq.write_table(_history(100), source)
    config = _config(tmp_path / "lake")
    from precise.ingest.batch import Ingestor

    real = Ingestor.commit_validated
    calls = {"n": 0}

    def crash_on_second(self, validated, covered):  # a fault injected between two chunks
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(self, validated, covered)

    monkeypatch.setattr(Ingestor, "commit_validated", crash_on_second)
    with pytest.raises(OSError):
        import_history(config, source, batch_rows=40)
    root = config.storage.resolved_root()
    assert read_events(root).num_rows == 40 and _ledger(root).imports[-1]["status"] == "running"
    monkeypatch.setattr(Ingestor, "commit_validated", real)
    done = import_history(config, source, batch_rows=40)
    assert (done["rows"], done["events"], done["dead_letters"]) == (100, 100, 0)
    events = read_events(root)
    assert events.num_rows == 100 and sorted(events.column("offset").to_pylist()) == list(range(100))


def _ledger(root: str) -> Ledger:
    return load_ledger(Files(root))


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    source = tmp_path / "history.parquet"
    pq.write_table(_history(5).drop(["movie"]), source)
    config = _config(tmp_path / "lake")
    with pytest.raises(HistoryError, match=r"ingest.field_mapping.fields.item_id: 'movie' is not a column"):
        import_history(config, source)
    with pytest.raises(HistoryError, match="no column 'user_id' of the event contract.*needs ingest.field_mapping"):
        import_history(_config(tmp_path / "lake", None), source)
    with pytest.raises(HistoryError, match="no such file"):
        import_history(config, tmp_path / "missing.parquet")
    assert not event_files(config.storage.resolved_root())
    # the job: exit 2 and the reason on stderr
    config_path = tmp_path / "c.yaml"
    config_path.write_text(json.dumps({"storage": {"root": str(tmp_path / "lake")},
                                       "ingest": {"field_mapping": MAPPING}}))
    run = subprocess.run([sys.executable, str(REPO / "jobs/import_history.py"), "--config", str(config_path),
                          "--input", str(source), "--no-sequences"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "'movie' is not a column" in run.stderr, run.stderr


@pytest.mark.integration
def test_import_a_movielens_history_with_a_mapping_and_train_on_it(ray_head, tmp_path):
    """ML-100k's ratings file in a schema of its own (nested user, seconds, no event ids, no action),
    imported with a mapping, sequences built, and a short universal training through the recipe."""
    from precise.data.movielens import _read_atomic, dataset_dir
    from precise.ingest.sequences import SequenceBuilder
    from precise.store import sequences as store_sequences
    from precise.store.registry import ModelRegistry
    from precise.train import recipe

    inter = _read_atomic(dataset_dir("ml-100k") / "ml-100k.inter")
    history = pa.table({"member": [{"uid": int(u)} for u in inter["user_id"]],
                        "film": inter["item_id"].astype(int), "score": inter["rating"].astype(float),
                        "seen_at": inter["timestamp"].astype(int)})
    bad = pa.table({"member": [{"uid": 1}, {"uid": None}], "film": [1, 2], "score": [3.0, 4.0],
                    "seen_at": [-1, 881250949]})
    source = tmp_path / "ratings.parquet"
    pq.write_table(pa.concat_tables([history, bad]), source)
    mapping = {"fields": {"user_id": "member.uid", "item_id": "film", "ts": "seen_at", "value": "score"},
               "constants": {"scene": "movies", "action": "rate"}, "timestamp": "s"}
    model = {"max_len": 50, "id_dim": 16, "text_dim": 16, "token_dim": 16, "num_layers": 1, "num_negatives": 32,
             "fusion": "id"}
    config = _config(tmp_path / "lake", mapping,
                     sequences={"max_len": 50, "buckets": 2},
                     training={"model": model, "universal": {"epochs": 1, "batch_size": 128, "seed": 3},
                               "num_workers": 1, "cpus_per_worker": 0.5})
    summary = import_history(config, source)
    assert (summary["rows"], summary["events"], summary["dead_letters"]) == (100_002, 100_000, 2)
    reasons = sorted(d["reason_kind"] for d in read_dead_letters(config.storage.resolved_root()).to_pylist())
    assert reasons == ["invalid_timestamp", "missing_field"]

    built = {r.name: r for r in SequenceBuilder(config).build()}
    kept = sum(min(n, 50) for n in inter["user_id"].value_counts())  # the most recent max_len per user
    assert built["all"].new_events == kept and built["all"].users_total == 943

    setup = recipe.setup(config, "universal", start="scratch")
    stored = store_sequences.read_sequences(config.storage.resolved_root(), "all")
    seen = set(pa.compute.list_flatten(stored.column("item_ids")).to_pylist())
    assert setup.data_window["users"] == 943 and set(setup.items) == seen  # no catalogue imported: ids only
    state, progress = recipe.fit_in_process(setup, log=None)
    version = recipe.register(setup, state, progress, config, ModelRegistry(config.storage.resolved_root()))
    assert version.kind == "universal" and len(progress.history) == 1
    assert progress.history[0]["loss"] > 0 and progress.best_metric is not None


def test_import_a_catalogue_with_a_text_template(tmp_path):
    from precise.ingest.history import ITEMS
    from precise.store.lake import read_items

    source = tmp_path / "movies.csv"
    source.write_text("movie,title,year,genres\n1,Toy Story,1995,Animation|Comedy\n2,,1995,Action\n"
                      "3,Heat,1995,Crime\n")
    config = PreciseConfig.model_validate({
        "storage": {"root": str(tmp_path / "lake")},
        "ingest": {"item_field_mapping": {"fields": {"item_id": "movie"}, "constants": {"scene": "movies"},
                                          "text_template": "{title} ({year}). Genres: {genres}"}}})
    summary = import_history(config, source, kind=ITEMS)
    assert (summary["rows"], summary["items"], summary["dead_letters"]) == (3, 2, 1)
    items = {r["item_id"]: r for r in read_items(config.storage.resolved_root()).to_pylist()}
    assert items["1"]["text"] == "Toy Story (1995). Genres: Animation|Comedy" and items["3"]["scene"] == "movies"
    dead = read_dead_letters(config.storage.resolved_root()).to_pylist()
    assert [(d["offset"], d["reason_kind"]) for d in dead] == [(1, "missing_field")]
    assert "text_template names 'title'" in dead[0]["reason"]
    assert import_history(config, source, kind=ITEMS)["already_imported"]
    with pytest.raises(HistoryError, match="text_template names 'year'"):
        source.write_text("movie,title\n1,Heat\n")
        import_history(config, source, kind=ITEMS)


@pytest.mark.integration
def test_live_events_in_your_schema_follow_an_import(kafka_config, ray_head, tmp_path):
    """After an import, live events in the same schema arrive on Kafka: ingest maps them with the same
    mapping, drops a re-sent imported event as a duplicate, and sequences join both; a rewind of the
    Kafka partitions leaves the import alone."""
    from precise.events.producer import EventProducer
    from precise.events.topics import ensure_topics
    from precise.ingest.job import IngestJob
    from precise.store import sequences as store_sequences
    from precise.store.rewind import RewindError, rewind

    source = tmp_path / "history.parquet"
    pq.write_table(_history(20), source)
    config = _config(tmp_path / "lake", sequences={"max_len": 50, "buckets": 1},
                     kafka=kafka_config.model_dump())
    config.ingest.publish_dead_letters = False
    assert import_history(config, source)["events"] == 20

    ensure_topics(config.kafka)
    first = _history(1).to_pylist()[0]  # imported row 0, sent again
    live = [{"who": {"id": 0}, "movie": "m99", "rated_at": 881_260_000 + i, "stars": 5.0} for i in range(3)]
    with EventProducer(config.kafka) as producer:
        for record in [*live, first, {"who": {"id": 0}, "rated_at": 881_270_000}]:
            producer.send_raw(config.kafka.events_topic, json.dumps(record).encode(), key=b"0")
    summary = IngestJob(config).run_once()
    assert (summary["events"], summary["dead_letters"]) == (3, 2), summary
    root = config.storage.resolved_root()
    assert read_events(root).num_rows == 23
    kinds = sorted(d["reason_kind"] for d in read_dead_letters(root).to_pylist())
    assert kinds == ["duplicate_event_id", "missing_field"]
    user0 = store_sequences.read_sequences(root, "all").filter(pa.compute.equal(
        store_sequences.read_sequences(root, "all").column("user_id"), "0")).to_pylist()[0]
    imported = [r["movie"] for i, r in enumerate(_history(20).to_pylist()) if r["who"]["id"] == 0]
    assert user0["item_ids"] == [*imported, "m99", "m99", "m99"]  # the import, then the live events

    storage = Files(root)
    with pytest.raises(RewindError, match="imported history"):
        rewind(storage, config.kafka.events_topic, {IMPORT_PARTITION_BASE: 0})
    config_path = tmp_path / "c.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    run = subprocess.run([sys.executable, "-m", "precise.cli", "lake", "rewind", "--config", str(config_path),
                          "--to-offset", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    offsets = load_ledger(storage).offsets[config.kafka.events_topic]
    assert offsets[IMPORT_PARTITION_BASE] == 20 and all(o == 0 for p, o in offsets.items() if p < IMPORT_PARTITION_BASE)
    assert read_events(root).num_rows == 20  # the live events wait to be re-read; the import stays
