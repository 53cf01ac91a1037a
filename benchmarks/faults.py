"""Fault classes of ingest (issue 13), each against a real broker, a real Ray head and a real lake.

Each class produces events, injects its fault, runs `jobs/ingest.py` as a subprocess and counts,
from the lake: produced (events that should reach the lake), in_lake (distinct of those found),
lost, duplicated (rows beyond one per event id), dead_lettered (lake dead-letter rows) and
kept_running (every ingest run that should succeed did, with rc 0). Ends with one JSON line {"classes": {NAME: {...}}}.

    python benchmarks/faults.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from precise.config import KafkaConfig  # noqa: E402
from precise.events.producer import EventProducer  # noqa: E402
from precise.events.topics import ensure_topics  # noqa: E402
from precise.ingest.faults import NO_FLOCK_ENV  # noqa: E402
from precise.stack import RayHead  # noqa: E402
from precise.stack.process import free_port  # noqa: E402
from precise.store.files import Files  # noqa: E402
from precise.store.lake import load_ledger, read_dead_letters, read_events  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _event(i: int) -> dict[str, Any]:
    return {"event_id": f"ev-{i}", "user_id": f"u{i % 13}", "item_id": f"i{i % 7}", "scene": "family",
            "action": "rate", "ts": 1_700_000_000_000 + i}


class Bench:
    def __init__(self, bootstrap: str, env: dict[str, str], work: Path) -> None:
        self.bootstrap, self.env, self.work = bootstrap, env, work

    def kafka(self, partitions: int = 1) -> KafkaConfig:
        tag = uuid.uuid4().hex[:8]
        return KafkaConfig(bootstrap_servers=self.bootstrap, events_topic=f"ev-{tag}", items_topic=f"it-{tag}",
                           dead_letter_topic=f"ev-{tag}.dlq", partitions=partitions)

    def config(self, kafka: KafkaConfig, **ingest: Any) -> tuple[Path, Path]:
        root = self.work / f"lake-{kafka.events_topic}"
        path = self.work / f"{kafka.events_topic}.yaml"
        path.write_text(yaml.safe_dump({
            "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "events_topic": kafka.events_topic,
                      "items_topic": kafka.items_topic, "dead_letter_topic": kafka.dead_letter_topic,
                      "partitions": kafka.partitions},
            "storage": {"root": str(root)},
            "ingest": {"interval_s": 0.5, "read_timeout_s": 10, "kafka_timeout_s": 5, "retry_backoff_s": 0.5,
                       "retry_backoff_max_s": 2, "build_sequences": False, **ingest}}))
        return path, root

    def job(self, config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(REPO / "jobs" / "ingest.py"), "--config", str(config), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **self.env, **(env or {})})

    def once(self, config: Path, timeout: float = 300, env: dict[str, str] | None = None) -> tuple[int, str]:
        proc = self.job(config, "--once", env=env)
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err

    @staticmethod
    def produce(kafka: KafkaConfig, ids: range) -> set[str]:
        with EventProducer(kafka) as producer:
            for i in ids:
                producer.send_event(_event(i))
            producer.flush(60)
        return {f"ev-{i}" for i in ids}


def tally(root: Path, expected: set[str], kept_running: bool, **extra: Any) -> dict[str, Any]:
    ids = read_events(root).column("event_id").to_pylist() if (root / "lake").exists() else []
    found = set(ids) & expected
    return {"produced": len(expected), "in_lake": len(found), "lost": len(expected - found),
            "duplicated": len(ids) - len(set(ids)), "dead_lettered": read_dead_letters(root).num_rows
            if (root / "lake").exists() else 0, "kept_running": kept_running, **extra}


def poison(b: Bench, n: int) -> dict[str, Any]:
    kafka = b.kafka(partitions=2)
    ensure_topics(kafka)
    config, root = b.config(kafka, publish_dead_letters=True)
    bad = [b"{not json", b"\xff\xfe", b"[1]", json.dumps({"event_id": "x"}).encode(), None,
           b'{"event_id": "big", "x": "' + b"y" * 1_500_000]  # oversized, with DLQ publishing on
    every, sent = max(1, n // len(bad)), 0
    with EventProducer(kafka, max_request_size=2 * 1024 * 1024) as producer:
        for i in range(n):
            producer.send_event(_event(i))
            if i % every == 0 and bad:
                producer.send_raw(kafka.events_topic, bad.pop(), key=b"k").get(timeout=30)
                sent += 1
        producer.flush(60)
    rc, _ = b.once(config)
    kinds = read_dead_letters(root).column("reason_kind").to_pylist()
    return tally(root, {f"ev-{i}" for i in range(n)}, rc == 0, poison_sent=sent,
                 dead_letter_kinds={k: kinds.count(k) for k in sorted(set(kinds))})


def transactional(b: Bench, n: int) -> dict[str, Any]:
    from confluent_kafka import Producer

    kafka = b.kafka(partitions=2)
    ensure_topics(kafka)
    config, root = b.config(kafka, read_timeout_s=30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": kafka.events_topic})
    producer.init_transactions(30)
    committed, aborted, i = set(), set(), 0
    for tx in range(6):
        producer.begin_transaction()
        ids = set()
        for _ in range(max(1, n // 6)):
            producer.produce(kafka.events_topic, key=str(i % 13).encode(), value=json.dumps(_event(i)).encode())
            ids.add(f"ev-{i}")
            i += 1
        if tx % 3 == 2:
            producer.abort_transaction(30)
            aborted |= ids
        else:
            producer.commit_transaction(30)
            committed |= ids
    started = time.monotonic()
    rc, _ = b.once(config)
    took = time.monotonic() - started
    ids = set(read_events(root).column("event_id").to_pylist())
    return tally(root, committed, rc == 0, aborted_in_lake=len(ids & aborted), once_s=round(took, 1))


def topic_recreated(b: Bench, n: int) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    kafka = b.kafka()
    ensure_topics(kafka)
    config, root = b.config(kafka, once_max_failures=1)
    old = b.produce(kafka, range(n))
    rc1, _ = b.once(config)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.delete_topics([kafka.events_topic])[kafka.events_topic].result(30)
    deadline = time.monotonic() + 60
    while kafka.events_topic not in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        try:
            ensure_topics(kafka)
        except Exception:
            time.sleep(0.5)
    new = b.produce(kafka, range(n, 3 * n))  # offsets 0..2n-1: below the ledger's n and past it
    rc2, err = b.once(config)
    ledger = load_ledger(Files(str(root)))
    return tally(root, old | new, rc1 == 0 and rc2 == 0 and "deleted and re-created" in err,
                 incarnations=len(ledger.incarnations), note="a new incarnation of the topic in the same lake")


def rewind_after_compaction(b: Bench, n: int) -> dict[str, Any]:
    kafka = b.kafka()
    ensure_topics(kafka)
    config, root = b.config(kafka, max_records_per_partition=max(2, n // 4), compact_min_files=2,
                            compact_grace_s=3600)
    expected = b.produce(kafka, range(n))
    ok = b.once(config)[0] == 0
    rw = subprocess.run([sys.executable, "-m", "precise.cli", "lake", "rewind", "--config", str(config),
                         "--offset", f"0={n // 2 + 1}"], capture_output=True, text=True, env={**os.environ, **b.env})
    ok = ok and rw.returncode == 0
    for _ in range(2):  # re-ingest, then a pass that compacts again
        ok = ok and b.once(config)[0] == 0
    return tally(root, expected, ok)


def two_writers(b: Bench, n: int) -> dict[str, Any]:
    kafka = b.kafka()
    ensure_topics(kafka)
    config, root = b.config(kafka, once_max_failures=1)
    first = b.job(config)
    expected = b.produce(kafka, range(n))
    time.sleep(5)
    # a second writer of the same lake, as from another node (no flock): the lease refuses it
    rc, err = b.once(config, env={NO_FLOCK_ENV: "1"})
    refused = rc != 0 and ("fenced" in err or "writes the lake" in err)
    expected |= b.produce(kafka, range(n, 2 * n))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if load_ledger(Files(str(root))).offsets.get(kafka.events_topic, {}).get(0) == 2 * n:
            break
        time.sleep(0.5)
    alive = first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    return tally(root, expected, alive and refused and first.returncode == 0)


def retention_gap(b: Bench, n: int) -> dict[str, Any]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    kafka = b.kafka()
    ensure_topics(kafka)
    config, root = b.config(kafka)
    first = b.produce(kafka, range(n))
    ok = b.once(config)[0] == 0
    later = b.produce(kafka, range(n, 3 * n))
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for f in admin.delete_records([TopicPartition(kafka.events_topic, 0, 2 * n)]).values():
        f.result(30)
    ok = ok and b.once(config)[0] == 0
    deleted = {f"ev-{i}" for i in range(n, 2 * n)}
    ledger = load_ledger(Files(str(root)))
    # the deleted records never existed for the lake: not lost by ingest, and recorded as a gap
    return tally(root, first | (later - deleted), ok, retention_deleted=len(deleted),
                 gap_recorded=ledger.totals.get("retention_gap_records", 0))


def sigkill(b: Bench, n: int, kills: int, rng: random.Random) -> dict[str, Any]:
    kafka = b.kafka(partitions=2)
    ensure_topics(kafka)
    config, root = b.config(kafka, max_records_per_partition=max(5, n // 10))
    expected: set[str] = set()
    for k in range(kills):
        proc = b.job(config)
        expected |= b.produce(kafka, range(k * n, (k + 1) * n))
        time.sleep(rng.uniform(3, 10))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    rc, _ = b.once(config)
    return tally(root, expected, rc == 0, kills=kills)


def broker_outage(b: Bench, n: int, broker: Any) -> dict[str, Any]:
    kafka = b.kafka()
    ensure_topics(kafka)
    config, root = b.config(kafka)
    proc = b.job(config)
    expected = b.produce(kafka, range(n))
    time.sleep(3)
    broker.stop()
    time.sleep(8)
    broker.start()
    expected |= b.produce(kafka, range(n, 2 * n))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if load_ledger(Files(str(root))).offsets.get(kafka.events_topic, {}).get(0) == 2 * n:
            break
        time.sleep(0.5)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    return tally(root, expected, alive and proc.returncode == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events and kills (a few minutes)")
    parser.add_argument("--only", action="append", help="run only these classes")
    args = parser.parse_args()
    n, kills = (40, 2) if args.quick else (2000, 6)
    rng = random.Random(13)
    from precise.stack import KafkaBroker

    with tempfile.TemporaryDirectory(prefix="precise-faults-") as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "kafka", port=free_port(), controller_port=free_port(), heap="384m")
        broker.start()
        gcs = free_port()
        head = RayHead(work / "ray", gcs_port=gcs, dashboard_port=free_port(), client_port=free_port(),
                       agent_port=free_port(), metrics_port=free_port(), num_cpus=2,
                       temp_dir=Path(f"/tmp/pr-faults-{gcs}"))
        head.start()
        b = Bench(broker.bootstrap, head.client_env(), work)
        classes: dict[str, Any] = {}
        runs = {
            "poison_oversized_dlq_on": lambda: poison(b, n),
            "transactional_with_aborts": lambda: transactional(b, n),
            "topic_recreated": lambda: topic_recreated(b, n),
            "rewind_after_compaction": lambda: rewind_after_compaction(b, n),
            "two_writers": lambda: two_writers(b, n),
            "retention_gap": lambda: retention_gap(b, n),
            "ingest_sigkill": lambda: sigkill(b, n, kills, rng),
            "broker_outage": lambda: broker_outage(b, n, broker),  # last: it restarts the broker
        }
        try:
            for name, run in runs.items():
                if args.only and name not in args.only:
                    continue
                started = time.monotonic()
                try:
                    classes[name] = run()
                except Exception as exc:  # report the class as failed, run the others
                    classes[name] = {"error": f"{type(exc).__name__}: {exc}"[:300], "kept_running": False}
                classes[name]["wall_s"] = round(time.monotonic() - started, 1)
                print(name, classes[name], file=sys.stderr, flush=True)
        finally:
            head.stop()
            broker.stop()
    print(json.dumps({"classes": classes}))


if __name__ == "__main__":
    main()
