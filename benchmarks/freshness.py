"""Freshness: how fast a user's live events reach their U2I answer, and what real-time vectors cost.

    python benchmarks/freshness.py [--quick]

Starts a Kafka broker (unless PRECISE_KAFKA_BOOTSTRAP is set) and a private Ray head, publishes
an ML-1M-sized snapshot of fixed random vectors with each user's sequence tail, and, in one run:

- `u2i_snapshot_*`: U2I at a fixed open-loop rate (default 100 requests/s) with
  `serve.user_vector_mode: snapshot`;
- `u2i_realtime_*`: the same load after redeploying with `realtime`, while live events arrive
  for random users at a steady rate (so real-time vectors are recomputed as they go stale);
  `--runs` rounds alternate the two modes, and each mode's latencies are pooled over its rounds;
- `event_to_recall_*`: for many users, one at a time at a steady event rate, the time from
  producing an event to the first U2I answer that counts it (`live_events` grew), polled every 10 ms;
- `new_item_to_recall_s`: the orchestrator runs as it does live (`Pipeline.run(follow=True)`:
  ingest, then an item cycle at each `pipeline.item_cycle_s` boundary, here 1 s of event time);
  the time from producing a new item to `item-catalog` until Serve returns it by id (it is then
  in the served index: one item cycle embedded it, published an item delta, the replicas loaded
  it), checked to be recalled by U2I for the user closest to it;
- `streaming_eval`: daily versus real-time user vectors of one model on ML-100k, full ranking
  (benchmarks/_streaming.py: the one recipe, the snapshot's embedder, precise.train.evaluate).

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from benchmarks._stack import kafka_bootstrap  # noqa: E402
from benchmarks.serve import ITEMS, USERS, Connection, open_loop, percentiles, ray_cluster  # noqa: E402

from precise.config import KafkaConfig, PreciseConfig  # noqa: E402
from precise.events.producer import EventProducer  # noqa: E402
from precise.events.topics import ensure_topics  # noqa: E402
from precise.predict.demo import publish_random_snapshot  # noqa: E402
from precise.stack.process import free_port  # noqa: E402


def deploy(config: dict, path: Path, port_holder: list[int]) -> str:
    from ray import serve

    from serve.app import app

    path.write_text(yaml.safe_dump(config))
    if not port_holder:
        port_holder.append(free_port())
        serve.start(http_options={"host": "127.0.0.1", "port": port_holder[0]},
                    logging_config={"enable_access_log": False})
    serve.run(app({"config": str(path)}), name="precise", route_prefix="/")
    return f"http://127.0.0.1:{port_holder[0]}"


def wait_serving(base: str, mode: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(base + "/v1/version", timeout=30) as response:
                info = json.loads(response.read())
        except OSError:
            info = {}
        if info.get("snapshot_version"):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{mode}: no snapshot served in time: {info}")
        time.sleep(0.5)


class EventSource:
    """Live events for random users at a steady rate, in a thread (the producer is synchronous)."""

    def __init__(self, kafka: KafkaConfig, rate: float, seed: int) -> None:
        self.kafka, self.rate, self.rng = kafka, rate, random.Random(seed)
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with EventProducer(self.kafka) as producer:
            next_at = time.perf_counter()
            while not self.stop.is_set():
                user, item = self.rng.randrange(USERS), self.rng.randrange(ITEMS)
                producer.send_event({"event_id": uuid.uuid4().hex, "user_id": f"u{user}", "item_id": f"i{item}",
                                     "scene": "s", "action": "rate", "ts": int(time.time() * 1000)})
                producer.flush()
                self.sent += 1
                next_at += 1 / self.rate
                time.sleep(max(0.0, next_at - time.perf_counter()))


async def event_to_recall(kafka: KafkaConfig, port: int, users: int, rate: float, seed: int) -> list[float]:
    """Per user: produce one event, then poll U2I until the answer counts it."""
    rng = random.Random(seed)
    producer = EventProducer(kafka)
    delays: list[float] = []

    async def one(n: int, user: str) -> None:
        await asyncio.sleep(n / rate)
        conn = Connection("127.0.0.1", port)
        status, body = await conn.post("/v1/recall/u2i", {"user_id": user, "k": 10})
        before = json.loads(body).get("live_events") or 0
        item = f"i{rng.randrange(ITEMS)}"
        sent = time.perf_counter()
        await asyncio.to_thread(lambda: (producer.send_event(
            {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "scene": "s", "action": "rate",
             "ts": int(time.time() * 1000)}), producer.flush()))
        deadline = sent + 30
        while time.perf_counter() < deadline:
            status, body = await conn.post("/v1/recall/u2i", {"user_id": user, "k": 10})
            if status == 200 and (json.loads(body).get("live_events") or 0) > before:
                delays.append(time.perf_counter() - sent)
                break
            await asyncio.sleep(0.01)
        conn.close()

    # users no other phase touched: their first live event is the one measured
    chosen = [f"u{u}" for u in rng.sample(range(USERS), users)]
    await asyncio.gather(*(one(n, u) for n, u in enumerate(chosen)))
    producer.close()
    return delays


def item_text(n: int) -> str:
    return f"film {n} about topic {n % 17} and theme {n % 5}"


def new_item_to_recall(settings: dict, kafka: KafkaConfig, port: int, vecs: object, event_rate: float) -> dict:
    """Produce one new item while the orchestrator follows the stream; seconds until Serve has it."""
    from precise.pipeline.orchestrator import Pipeline
    from precise.store.pipeline import PipelineRecords

    cfg = PreciseConfig.model_validate({**settings, "ingest": {"publish_dead_letters": False},
                                        "pipeline": {"cycle_s": 86_400, "item_cycle_s": 1, "poll_interval_s": 0.5},
                                        "predict": {"task": "bench", "actor_num_cpus": 0.25, "batch_size": 256}})
    day = int(time.time() * 1000) // 86_400_000 * 86_400_000
    records = PipelineRecords(cfg.storage.resolved_root(), cfg.pipeline.mode)
    records.save_state({"done_boundaries": [day], "reports": []})  # today's full cycle published the snapshot
    stop = threading.Event()
    source = EventSource(kafka, event_rate, seed=11)  # the watermark moves: item boundaries pass
    source.thread.start()
    thread = threading.Thread(target=Pipeline(cfg, stop).run, kwargs={"follow": True}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not records.state().get("item_boundaries"):  # the first item cycle: nothing new, nothing published
            if time.monotonic() > deadline or not thread.is_alive():
                raise SystemExit("new item: the orchestrator ran no item cycle")
            time.sleep(0.2)
        text = "a brand new documentary about deep sea creatures and coral reefs"
        with EventProducer(kafka) as producer:
            sent = time.perf_counter()
            producer.send_item({"item_id": "fresh-1", "text": text, "created_ts": int(time.time() * 1000)})
            producer.flush()
        body = None
        while time.perf_counter() - sent < 300:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings/items",
                                             json.dumps({"item_id": "fresh-1"}).encode(),
                                             {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    body = json.loads(response.read())
                    break
            except OSError:  # 404 until the item delta is served
                time.sleep(0.05)
        seconds = time.perf_counter() - sent
        if body is None:
            raise SystemExit("new item: not served within 300 s")
        vector = np.asarray(body["vector"], np.float32)
        user = int(np.argmax(vecs.users @ vector))  # the user closest to the new item
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/recall/u2i",
                                         json.dumps({"user_id": f"u{user}", "k": 100}).encode(),
                                         {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            recalled = "fresh-1" in {h["item_id"] for h in json.loads(response.read())["items"]}
        state = records.state()
        return {"seconds": round(seconds, 2), "recalled_by_u2i": recalled, "snapshot_version": body["snapshot_version"],
                "model_version": body["model_version"], "item_cycles": len(state.get("item_boundaries") or [])}
    finally:
        stop.set()
        thread.join(120)
        source.stop.set()
        source.thread.join()


def pct(values: list[float], q: float, scale: float = 1.0) -> float | None:
    return round(float(np.percentile(np.asarray(values) * scale, q)), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop U2I requests/s")
    parser.add_argument("--event-rate", type=float, default=10.0, help="live events/s during the measurements")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--streaming-events", type=int, default=None,
                        help="test events of the streaming evaluation (default 2000, --quick 500)")
    parser.add_argument("--no-streaming-eval", action="store_true", help="skip the ML-100k streaming evaluation")
    parser.add_argument("--runs", type=int, default=3,
                        help="alternating snapshot/realtime rounds; latencies are pooled over them")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else 30.0
    probe_users = 50 if args.quick else 300
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="precise-bench-fresh-") as tmp, kafka_bootstrap() as bootstrap, \
            ray_cluster(None, Path(tmp)):
        import ray
        from ray import serve

        root = Path(tmp) / "root"
        tag = uuid.uuid4().hex[:6]
        kafka = KafkaConfig(bootstrap_servers=bootstrap, events_topic=f"bench-fresh-events-{tag}",
                            items_topic=f"bench-fresh-items-{tag}", dead_letter_topic=f"bench-fresh-dlq-{tag}",
                            partitions=2)
        ensure_topics(kafka)
        rng = np.random.default_rng(1)
        tails = {f"u{u}": [f"i{i}" for i in rng.choice(ITEMS, 20, replace=False)] for u in range(USERS)}
        snapshot_ms = int(time.time() * 1000)
        _, vecs = publish_random_snapshot(root, "bench", users=USERS, items=ITEMS, dim=args.dim, seed=0,
                                          model_version="random-0", tails=tails, sequences_until_ms=snapshot_ms,
                                          item_texts=[item_text(n) for n in range(ITEMS)])
        with EventProducer(kafka) as producer:  # the catalogue the snapshot was embedded from
            for n in range(ITEMS):
                producer.send_item({"item_id": f"i{n}", "text": item_text(n), "created_ts": snapshot_ms})
            producer.flush()
        streaming = None
        if not args.no_streaming_eval:  # first, on this Ray head: it trains in-process and disconnects after
            from benchmarks._streaming import streaming_eval

            events = args.streaming_events or (500 if args.quick else 2000)
            streaming = streaming_eval(args.quick, Path(tmp) / "stream", events,
                                       log=lambda m: print(m, file=sys.stderr))
            print(json.dumps({"streaming_eval": streaming}), file=sys.stderr)
            if ray.is_initialized():
                ray.shutdown()
        ray.init(logging_level="ERROR", log_to_driver=False)
        config_path = Path(tmp) / "platform.yaml"
        port: list[int] = []

        def config(mode: str) -> dict:
            return {"storage": {"root": str(root)}, "kafka": kafka.model_dump(),
                    "serve": {"task": "bench", "poll_interval_s": 1.0, "user_vector_mode": mode}}

        def u2i(r: random.Random) -> dict:
            return {"user_id": f"u{r.randrange(USERS)}", "k": 10}

        # Alternating rounds (snapshot, realtime, snapshot, ...), each on a fresh deployment, so that
        # a change in the machine's load falls on both modes rather than on one.
        rounds: dict[str, list[dict]] = {"snapshot": [], "realtime": []}
        latencies: dict[str, list[float]] = {"snapshot": [], "realtime": []}
        delays: list[float] = []
        for run in range(args.runs):
            for mode in ["snapshot", "realtime"]:
                base = deploy(config(mode), config_path, port)
                source = EventSource(kafka, args.event_rate, seed=7 + run)
                wait_serving(base, mode)
                source.thread.start()
                open_loop("127.0.0.1", port[0], "/v1/recall/u2i", u2i, args.rate, 2.0, seed=9)  # warm up
                measured = open_loop("127.0.0.1", port[0], "/v1/recall/u2i", u2i, args.rate, seconds,
                                     seed=1 + run, keep_latencies=latencies[mode])
                measured["load_average_1m"] = round(os.getloadavg()[0], 1)
                rounds[mode].append(measured)
                if mode == "realtime" and run == 0:
                    delays = asyncio.run(event_to_recall(kafka, port[0], probe_users, args.event_rate, seed=3))
                source.stop.set()
                source.thread.join()
        results = {mode: {"requests": sum(r["requests"] for r in rounds[mode]),
                          "failed": sum(r["failed"] for r in rounds[mode]),
                          **percentiles(latencies[mode]), "rounds": rounds[mode]} for mode in rounds}
        print(json.dumps({"u2i": results}), file=sys.stderr)
        new_item = new_item_to_recall(config("realtime"), kafka, port[0], vecs, args.event_rate)
        print(json.dumps({"new_item": new_item}), file=sys.stderr)
        serve.shutdown()
    snap, rt = results["snapshot"], results["realtime"]
    result = {
        "benchmark": "freshness", "quick": args.quick, "machine": {"cpus": os.cpu_count()},
        "users": USERS, "items": ITEMS, "dim": args.dim, "rate_rps": args.rate, "event_rate_per_s": args.event_rate,
        "load_average_1m": {"start": round(load_start, 1), "end": round(os.getloadavg()[0], 1)},
        "event_to_recall_p50_s": pct(delays, 50), "event_to_recall_p99_s": pct(delays, 99),
        "event_to_recall_max_s": pct(delays, 100), "event_to_recall_measured": len(delays),
        "event_to_recall_probes": probe_users,
        "new_item_to_recall_s": new_item["seconds"], "new_item": new_item,
        "u2i_snapshot_p50_ms": snap["p50_ms"], "u2i_snapshot_p99_ms": snap["p99_ms"],
        "u2i_realtime_p50_ms": rt["p50_ms"], "u2i_realtime_p99_ms": rt["p99_ms"],
        "realtime_over_snapshot_p99": round(rt["p99_ms"] / snap["p99_ms"], 2) if snap["p99_ms"] else None,
        # the same ratio per round (a round: one snapshot and one realtime window back to back)
        "realtime_over_snapshot_p99_rounds": [round(r["p99_ms"] / s["p99_ms"], 2) if s["p99_ms"] else None
                                              for s, r in zip(snap["rounds"], rt["rounds"], strict=True)],
        "streaming_eval": streaming,
        "open_loop": {"snapshot": snap, "realtime": rt},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
