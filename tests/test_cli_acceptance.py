"""Every `precise` verb against a real lake, registry and snapshots made by a short pipeline run.

One module-scoped world: a synthetic stream (plus three malformed records) replayed into the test
broker, a two-cycle pipeline (ingest, universal + targeted training on Ray, the serving gate,
prediction and publication). The tests then drive the CLI verbs on it, in-process through
`precise.cli.main` (the console script's entry point) and once as the installed `precise` script:
read-only verbs first, then the ones that move pointers (a model rollback the next prediction
follows, a snapshot rollback a running Serve app follows), then a rewind and re-ingest that loses
nothing, and a `pipeline rerun` that makes cycles due again. (The console script itself, and a
broker that does not answer: tests/test_cli_lake.py.)
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
import yaml

from _serve_support import deploy, make_topics
from precise.cli import main
from precise.config import PreciseConfig, load_config
from precise.data import SyntheticConfig, generate_synthetic
from precise.events.replay import replay
from precise.store.lake import read_dead_letters, read_events
from precise.store.registry import ModelRegistry
from precise.store.snapshots import SnapshotStore

pytestmark = pytest.mark.integration

TASK = "t"
BAD_RECORDS = [b"not json at all", b'{"event_id": "e-bad", "user_id": "u1"}', b"\xff\xfe\x00 not utf-8"]
VERBS = [("config", "validate"), ("config", "show"), ("lake", "status"), ("lake", "dead-letters"),
         ("lake", "rewind"), ("models", "list"), ("snapshots", "list"), ("pipeline", "status"), ("stack", "status")]


@dataclass
class World:
    root: Path
    config_path: Path
    config: PreciseConfig
    produced: int  # valid events sent to Kafka

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str, json_out: bool = True) -> tuple[int, Any, str]:
        """Run `precise ARGS --config <world> [--json]`: (exit code, parsed stdout, stderr)."""
        rc = main([*args, "--config", str(self.config_path), *(["--json"] if json_out else [])])
        out = capsys.readouterr()
        try:
            parsed: Any = json.loads(out.out) if json_out else out.out
        except json.JSONDecodeError:
            parsed = out.out
        return rc, parsed, out.err


@pytest.fixture(scope="module")
def world(kafka_broker, ray_head, tmp_path_factory) -> World:
    from kafka import KafkaProducer

    from precise.pipeline.orchestrator import Pipeline

    root = tmp_path_factory.mktemp("cli-world")
    kafka = make_topics(kafka_broker.bootstrap, "cli", partitions=2)
    raw = {
        "kafka": kafka.model_dump(),
        "storage": {"root": str(root)},
        "ingest": {"publish_dead_letters": False, "kafka_timeout_s": 5},
        "sequences": {"max_len": 200, "buckets": 2, "all_scene": {"name": "all", "actions": ["click"]},
                      "targets": [{"name": "like", "actions": ["like"]}]},
        "training": {"model": {"fusion": "id", "max_len": 20, "id_dim": 8, "num_layers": 1, "num_negatives": 16},
                     "universal": {"epochs": 1}, "targeted": {"epochs": 1}, "num_workers": 1,
                     "cpus_per_worker": 0.5},
        "pipeline": {"cycle_s": 86_400, "max_cycles": 2, "predict": True, "item_cycle_s": 0},
        "predict": {"task": TASK, "actor_num_cpus": 0.25, "batch_size": 256},
        "serve": {"task": TASK, "poll_interval_s": 0.25, "user_vector_mode": "snapshot",
                  "ingress": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1},
                  "recall": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1}},
    }
    config_path = root / "platform.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    stream = generate_synthetic(SyntheticConfig(users=120, initial_items=50, new_items_per_day=15, days=4,
                                                events_per_second=0.02, seed=7))
    replay(stream, config.kafka, progress=False)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    for n, value in enumerate(BAD_RECORDS):  # rejected by ingest: the lake's dead letters
        producer.send(kafka.events_topic, value=value, partition=n % 2)
    producer.flush()
    producer.close()
    summary = Pipeline(config).run()
    assert summary["cycles_run"] == 2, summary
    return World(root, config_path, config, produced=len(stream.events))


def test_every_verb_has_help():
    for verb in VERBS:
        with pytest.raises(SystemExit) as exit_:
            main([*verb, "--help"])
        assert exit_.value.code == 0, verb
    for group, action in (("models", "promote"), ("models", "rollback"), ("snapshots", "rollback")):
        with pytest.raises(SystemExit) as exit_:
            main([group, action, "--help"])
        assert exit_.value.code == 0


def test_read_only_verbs(world, capsys, tmp_path):
    rc, out, _ = world.cli(capsys, "config", "validate")
    assert rc == 0 and out["valid"]
    rc, out, _ = world.cli(capsys, "config", "show")
    assert rc == 0 and out["predict"]["task"] == TASK

    rc, status, _ = world.cli(capsys, "lake", "status")
    assert rc == 0 and status["broker"]["reachable"], status["broker"]
    events = [p for p in status["partitions"] if p["role"] == "events"]
    assert len(events) == 2 and all(p["lag"] == 0 and p["next_offset"] == p["end_offset"] > 0 for p in events)
    assert sum(p["next_offset"] for p in events) == world.produced + len(BAD_RECORDS)
    assert status["events"]["committed"] == world.produced and status["events"]["files"] > 0
    assert status["events"]["bytes"] > 0 and status["events"]["uncommitted_files"] == 0
    assert status["dead_letters"]["committed"] == 3
    by_reason = status["dead_letters"]["by_reason"]
    assert sum(by_reason.values()) == 3 and {"invalid_json", "missing_field", "not_utf8"} <= set(by_reason)
    assert status["retention_gaps"]["count"] == 0 and status["rewinds"] == []
    lease = status["writer_lease"]
    assert lease["state"] == "released" and lease["host"] and lease["generation"] >= 1
    rc, text, _ = world.cli(capsys, "lake", "status", json_out=False)
    assert rc == 0 and "lag" in text and "dead letters: 3" in text and "writer lease: released" in text

    rc, listed, _ = world.cli(capsys, "lake", "dead-letters", "--limit", "2")
    assert rc == 0 and listed["total"] == 3 and listed["shown"] == 2
    rc, listed, _ = world.cli(capsys, "lake", "dead-letters", "--reason", "invalid_json")
    kinds = {r["reason_kind"] for r in listed["dead_letters"]}
    assert rc == 0 and kinds == {"invalid_json"} and listed["total"] == len(listed["dead_letters"]) >= 1
    assert world.cli(capsys, "lake", "dead-letters", "--reason", "no-such-kind")[0] == 2
    assert world.cli(capsys, "lake", "dead-letters", "--export", str(tmp_path / "x.csv"))[0] == 2
    # the exports lose nothing: every record, with its raw bytes
    lake = read_dead_letters(world.root).sort_by([("topic", "ascending"), ("partition", "ascending"),
                                                  ("offset", "ascending")])
    rc, out, _ = world.cli(capsys, "lake", "dead-letters", "--export", str(tmp_path / "dl.parquet"))
    assert rc == 0 and out["exported"] == 3 and pq.read_table(tmp_path / "dl.parquet").equals(lake)
    rc, out, _ = world.cli(capsys, "lake", "dead-letters", "--export", str(tmp_path / "dl.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert rc == 0 and sorted(base64.b64decode(r["value_b64"]) for r in rows) == sorted(BAD_RECORDS)
    assert [(r["partition"], r["offset"], r["reason"]) for r in rows] == [
        (r["partition"], r["offset"], r["reason"]) for r in lake.to_pylist()]

    rc, pipe, _ = world.cli(capsys, "pipeline", "status")
    assert rc == 0 and len(pipe["done_boundaries"]) == 2 and pipe["mode"] == "periodic"
    last = pipe["last_cycle"]
    assert last["cycle"] == 2 and last["gate"]["choice"] in ("universal", "targeted")
    assert set(last["gate"]["scores"]) == {"universal", "targeted"} and last["snapshot"] == "000002"
    # the stream has days past the two cycles run: the next boundary is due (max_cycles stopped the run)
    assert pipe["next_boundary"]["due"] and pipe["pending_boundaries"] >= 1
    assert pipe["next_boundary"]["ts"] == pipe["done_boundaries"][-1]["ts"] + 86_400_000
    rc, text, _ = world.cli(capsys, "pipeline", "status", json_out=False)
    assert rc == 0 and "gate:" in text and "2 cycles done" in text

    rc, models, _ = world.cli(capsys, "models", "list", "--kind", "targeted")
    assert rc == 0 and models["task"] == "like" and [v["version"] for v in models["versions"]][:2] == [
        "000001", "000002"]
    rc, shown, _ = world.cli(capsys, "models", "show", "000001", "--kind", "universal")
    assert rc == 0 and shown["metadata"]["data_window"]["until_ts"] == pipe["done_boundaries"][0]["ts"]
    rc, diff, _ = world.cli(capsys, "models", "diff", "000001", "000002", "--kind", "universal")
    assert rc == 0 and "data_window.until_ts" in diff["changed"]

    rc, snaps, _ = world.cli(capsys, "snapshots", "list", "--task", TASK)
    assert rc == 0 and [s["version"] for s in snaps["snapshots"]][:2] == ["000001", "000002"]
    rc, snap, _ = world.cli(capsys, "snapshots", "show", "000001", "--task", TASK)
    assert rc == 0 and snap["model_version"] == snap["manifest"]["model_version"]


def test_models_rollback_is_followed_by_the_next_prediction(world, capsys):
    from precise.config import EmbedderConfig
    from precise.predict.embedder import REGISTRY_EMBEDDER
    from precise.predict.job import run_predict

    registry = ModelRegistry(world.root)
    before = registry.latest("targeted", "like").version
    rc, moved, _ = world.cli(capsys, "models", "rollback", "targeted", "--note", "acceptance")
    assert rc == 0 and moved["moved"] and moved["from"] == before and moved["to"] < before
    rc, listed, _ = world.cli(capsys, "models", "list", "--kind", "targeted")
    assert listed["latest"] == moved["to"] and listed["moves"][-1]["note"] == "acceptance"
    assert before in [v["version"] for v in listed["versions"] if v["withdrawn"]]
    assert world.cli(capsys, "models", "promote", "targeted", "000099")[0] == 2
    assert registry.latest("targeted", "like").version == moved["to"]

    # the prediction job with the registry embedder and no pinned version embeds with LATEST
    cfg = world.config.model_copy(deep=True)
    cfg.predict.embedder = EmbedderConfig(import_path=REGISTRY_EMBEDDER, kwargs={
        "root": str(world.root), "kind": "targeted", "task": "like"})
    snapshot = run_predict(cfg).summary()
    assert snapshot["model_version"] == f"targeted/like/{moved['to']}"

    rc, promoted, _ = world.cli(capsys, "models", "promote", "targeted", before)
    assert rc == 0 and promoted["to"] == before and registry.latest("targeted", "like").version == before
    assert [m["action"] for m in registry.moves("targeted", "like")] == ["rollback", "promote"]


def _served(url: str) -> str | None:
    try:
        return requests.get(f"{url}/v1/version", timeout=10).json().get("snapshot_version")
    except (requests.RequestException, ValueError):
        return None


def _wait_served(url: str, version: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (got := _served(url)) != version:
        assert time.monotonic() < deadline, f"Serve did not switch to {version}: serves {got}"
        time.sleep(0.25)


def test_snapshots_rollback_is_followed_by_serve(world, capsys):
    from ray import serve

    store = SnapshotStore(world.root, TASK)
    (world.root / "serve").mkdir(exist_ok=True)
    _, port = deploy(yaml.safe_load(world.config_path.read_text()), world.root / "serve", "precise")
    url = f"http://127.0.0.1:{port}"
    try:
        latest = store.latest_version()
        _wait_served(url, latest)
        rc, out, _ = world.cli(capsys, "snapshots", "rollback", "--task", TASK)
        older = [v for v in store.versions() if v < latest][-1]
        assert rc == 0 and out["from"] == latest and out["served"] == older
        _wait_served(url, older)  # the running app follows the pin, no restart
        rc, out, _ = world.cli(capsys, "snapshots", "pin", latest, "--task", TASK)
        assert rc == 0 and out["pinned"] == latest
        _wait_served(url, latest)
        rc, out, _ = world.cli(capsys, "snapshots", "unpin", "--task", TASK)
        assert rc == 0 and out["unpinned"] and store.pinned_version() is None
    finally:
        serve.shutdown()


def test_lake_rewind_and_reingest_lose_nothing(world, capsys):
    from precise.ingest.job import IngestJob

    rc, status, _ = world.cli(capsys, "lake", "status")
    nexts = {p["partition"]: p["next_offset"] for p in status["partitions"] if p["role"] == "events"}
    half = [f"{p}={o // 2}" for p, o in sorted(nexts.items())]
    rc, out, _ = world.cli(capsys, "lake", "rewind", *(a for pair in half for a in ("--offset", pair)),
                           json_out=False)
    assert rc == 0, out
    rc, status, _ = world.cli(capsys, "lake", "status")
    lags = {p["partition"]: p["lag"] for p in status["partitions"] if p["role"] == "events"}
    assert lags == {p: o - o // 2 for p, o in nexts.items()}  # the re-read still to do, against Kafka
    assert status["events"]["committed"] < world.produced and len(status["rewinds"]) == 1

    IngestJob(world.config).run_once()
    events = read_events(world.root, columns=["event_id"]).column("event_id").to_pylist()
    assert len(events) == world.produced and len(set(events)) == world.produced  # all back, none twice
    rc, status, _ = world.cli(capsys, "lake", "status")
    assert all(p["lag"] == 0 for p in status["partitions"] if p["role"] == "events")
    assert status["events"]["committed"] == world.produced and status["dead_letters"]["committed"] == 3

    # the cycles on the re-read data are trained again by the next pipeline run
    rc, before, _ = world.cli(capsys, "pipeline", "status")
    second = before["done_boundaries"][1]["ts"]
    rc, out, _ = world.cli(capsys, "pipeline", "rerun", "--from", str(second))
    assert rc == 0 and out["forgotten"] == [before["done_boundaries"][1]["at"]]
    rc, after, _ = world.cli(capsys, "pipeline", "status")
    assert len(after["done_boundaries"]) == 1 and after["pending_boundaries"] == before["pending_boundaries"] + 1
    assert after["next_boundary"] == {**before["next_boundary"], "ts": second, "at": out["forgotten"][0]}
