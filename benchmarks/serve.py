"""Recall service latency and throughput over HTTP vs in-process FAISS on the same index, same run.

    python benchmarks/serve.py [--quick]

Starts what it needs (a Kafka broker unless PRECISE_KAFKA_BOOTSTRAP is set, a private Ray head
unless --ray-address is given), publishes an embedding snapshot of ML-1M size with fixed random
vectors (6,040 users, 3,706 items), streams a few recent events per user into Kafka (U2I2I seeds),
deploys serve/app.py and measures on loopback:

- open loop at a fixed rate (default 100 requests/s, sent from 64 threads): U2I and U2I2I latency
  p50/p99, measured from each request's scheduled start, so a slow server cannot hide queueing (no
  coordinated omission);
- closed loop at fixed concurrency levels: U2I throughput and latency; `max_qps` is the best;
- the baseline: in-process FAISS search of the same index with the same queries, one at a time.

The measured phases run `--runs` times (default 3) on the same deployment; each figure in the
JSON is the median of the runs, with min/median/max under `spread`, each run's figures under
`runs`, and the load average at start and end. `--ingress` picks Serve's HTTP ingress of the Ray
head it starts (stack.ray.serve_ingress: haproxy, the default, or Serve's Python proxy).

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# This file is named serve.py, so its folder must leave sys.path: there, `import serve` would find
# this script instead of the Serve app package at the repository root (in the Ray workers too,
# which inherit the driver's path).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from benchmarks._stack import kafka_bootstrap  # noqa: E402
from benchmarks._stats import spread as spread_of  # noqa: E402

from precise.config import IndexConfig, KafkaConfig  # noqa: E402
from precise.events.producer import EventProducer  # noqa: E402
from precise.events.topics import ensure_topics  # noqa: E402
from precise.predict.demo import publish_random_snapshot  # noqa: E402
from precise.stack import RayHead  # noqa: E402
from precise.stack.process import free_port  # noqa: E402
from precise.store.snapshots import read_index  # noqa: E402

USERS, ITEMS = 6040, 3706  # MovieLens-1M


@contextlib.contextmanager
def ray_cluster(address: str | None, state: Path, ingress: str = "haproxy") -> Iterator[None]:
    if address:
        os.environ["RAY_ADDRESS"] = address
        yield
        return
    gcs = free_port()
    head = RayHead(state / "ray", gcs_port=gcs, dashboard_port=free_port(), client_port=free_port(),
                   agent_port=free_port(), metrics_port=free_port(), num_cpus=2,
                   temp_dir=Path(f"/tmp/pr-bench-{gcs}"), serve_ingress=ingress)
    head.start()
    os.environ.update(head.client_env())
    try:
        yield
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        head.stop()


def percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: the load generator shares the 2 cores
    with the server, so it must cost far less per request than a general-purpose client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            return status, await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _send(conn: Connection, path: str, body: dict) -> bool:
    try:
        status, _ = await conn.post(path, body)
        return status == 200
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return False


class BlockingConnection:
    """One keep-alive HTTP/1.1 connection on a blocking socket, for the open loop's sender threads."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        self.file: Any = None

    def post(self, path: str, payload: bytes) -> int:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's streams do
            self.file = self.sock.makefile("rb")
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        status = int(self.file.readline().split(b" ", 2)[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.file.read(length)) != length:
            raise ConnectionError("connection closed mid-answer")
        return status

    def close(self) -> None:
        if self.sock is not None:
            self.file.close()
            self.sock.close()
        self.sock = self.file = None


def open_loop(host: str, port: int, path: str, make_body: Callable[[random.Random], dict], rate: float,
              seconds: float, seed: int, connections: int = 64,
              keep_latencies: list[float] | None = None) -> dict[str, Any]:
    """Requests at a fixed rate; latency counted from each request's scheduled send time (also
    appended to `keep_latencies`, for pooling over several calls), so queueing is never hidden.

    Sent from `connections` threads, request n by thread n mod `connections`, each sleeping with
    `time.sleep` until the request is due: on this machine asyncio's timers woke a median 1.4 ms
    late (they round to the millisecond and share the loop with every other request), and that
    lateness counted as service latency. `client_late_*` says how late the sends still were."""
    rng = random.Random(seed)
    count = int(rate * seconds)
    payloads = [json.dumps(make_body(rng)).encode() for _ in range(count)]
    latencies: list[float | None] = [None] * count
    late: list[float] = [0.0] * count
    start = time.perf_counter() + 0.2

    def sender(first: int) -> None:
        conn = BlockingConnection(host, port)
        for n in range(first, count, connections):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            late[n] = time.perf_counter() - scheduled
            try:
                if conn.post(path, payloads[n]) == 200:
                    latencies[n] = time.perf_counter() - scheduled
            except (OSError, ValueError, IndexError):
                conn.close()
        conn.close()

    threads = [threading.Thread(target=sender, args=(first,), daemon=True) for first in range(min(connections, count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    answered = [latency for latency in latencies if latency is not None]
    if keep_latencies is not None:
        keep_latencies.extend(answered)
    late_ms = np.asarray(late) * 1000
    return {"rate": rate, "requests": count, "failed": count - len(answered),
            "achieved_qps": round(len(answered) / elapsed, 1), **percentiles(answered),
            "client_late_p50_ms": round(float(np.percentile(late_ms, 50)), 3),
            "client_late_p99_ms": round(float(np.percentile(late_ms, 99)), 3)}


async def closed_loop(host: str, port: int, path: str, make_body: Callable[[random.Random], dict],
                      concurrency: int, seconds: float, seed: int) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the previous one is answered."""
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal failed
        rng = random.Random(seed + n)
        conn = Connection(host, port)
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            if await _send(conn, path, make_body(rng)):
                latencies.append(time.perf_counter() - sent)
            else:
                failed += 1
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies) + failed, "failed": failed,
            "qps": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


def inprocess(index_ref: Any, queries: np.ndarray, k: int) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)  # the same thread count as a Recall replica
    index, info = read_index(index_ref)
    from precise.predict.index import search

    for q in queries[:50]:  # warm up
        search(index, q[None, :], k, info)
    latencies = []
    for q in queries:
        started = time.perf_counter()
        search(index, q[None, :], k, info)
        latencies.append(time.perf_counter() - started)
    return {"queries": len(queries), "qps_one_thread": round(len(latencies) / sum(latencies), 1),
            **percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter phases (< 5 minutes in all)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s for the p50/p99 numbers")
    parser.add_argument("--concurrency", default="1,4,16", help="closed-loop concurrency levels")
    parser.add_argument("--events-per-user", type=int, default=None)
    parser.add_argument("--ray-address", help="use this Ray cluster instead of starting one")
    parser.add_argument("--topology", choices=["single", "split"], default="single",
                        help="serve.topology: HTTP into Recall directly, or via an Ingress deployment")
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy",
                        help="stack.ray.serve_ingress of the Ray head started here (ignored with --ray-address)")
    parser.add_argument("--runs", type=int, default=3, help="how often the measured phases run")
    args = parser.parse_args()
    seconds = 8.0 if args.quick else 30.0
    events_per_user = args.events_per_user or (5 if args.quick else 20)
    levels = [int(c) for c in args.concurrency.split(",")]
    started = time.perf_counter()
    load_start = os.getloadavg()[0]  # other work on the machine skews every number: say how much

    with tempfile.TemporaryDirectory(prefix="precise-bench-serve-") as tmp, kafka_bootstrap() as bootstrap, \
            ray_cluster(args.ray_address, Path(tmp), args.ingress):
        import ray
        from ray import serve

        from serve.app import app

        root = Path(tmp) / "root"
        tag = uuid.uuid4().hex[:6]
        kafka = KafkaConfig(bootstrap_servers=bootstrap, events_topic=f"bench-serve-events-{tag}",
                            items_topic=f"bench-serve-items-{tag}", dead_letter_topic=f"bench-serve-dlq-{tag}",
                            partitions=2)
        ensure_topics(kafka)
        ref, vecs = publish_random_snapshot(root, "bench", users=USERS, items=ITEMS, dim=args.dim, seed=0,
                                            model_version="random-0", index=IndexConfig())
        rng = np.random.default_rng(1)
        now = int(time.time() * 1000)
        with EventProducer(kafka) as producer:
            for u, user in enumerate(vecs.user_ids):
                for n, item in enumerate(rng.choice(ITEMS, events_per_user, replace=False)):
                    producer.send_event({"event_id": f"{u}-{n}", "user_id": user, "item_id": f"i{item}",
                                         "scene": "s", "action": "rate", "ts": now - 10_000 + n})
            producer.flush()
        config = {"storage": {"root": str(root)}, "kafka": kafka.model_dump(),
                  "serve": {"task": "bench", "poll_interval_s": 5.0, "topology": args.topology}}
        config_path = Path(tmp) / "platform.yaml"
        config_path.write_text(yaml.safe_dump(config))

        ray.init(logging_level="ERROR", log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        serve.run(app({"config": str(config_path)}), name="precise", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        total_events = USERS * events_per_user
        deadline = time.monotonic() + 180
        while True:  # recent items fully consumed before measuring U2I2I
            with urllib.request.urlopen(base + "/v1/version", timeout=30) as response:
                recent = json.loads(response.read()).get("recent_items") or {}
            if recent.get("consumed", 0) >= total_events:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"recent items not consumed in time: {recent}")
            time.sleep(0.5)

        def u2i(r: random.Random) -> dict:
            return {"user_id": f"u{r.randrange(USERS)}", "k": args.k}

        def u2i2i(r: random.Random) -> dict:
            return {"user_id": f"u{r.randrange(USERS)}", "k": args.k}

        host = "127.0.0.1"
        asyncio.run(closed_loop(host, port, "/v1/recall/u2i", u2i, 4, 2.0, seed=99))  # warm up every path
        asyncio.run(closed_loop(host, port, "/v1/recall/u2i2i", u2i2i, 4, 2.0, seed=98))
        runs = []
        for run in range(args.runs):
            u2i_open = open_loop(host, port, "/v1/recall/u2i", u2i, args.rate, seconds, seed=1 + 10 * run)
            u2i2i_open = open_loop(host, port, "/v1/recall/u2i2i", u2i2i, args.rate, seconds, seed=2 + 10 * run)
            closed = [asyncio.run(closed_loop(host, port, "/v1/recall/u2i", u2i, c, seconds / 2, seed=3 + 10 * run))
                      for c in levels]
            baseline = inprocess(ref, vecs.users[np.random.default_rng(4 + run).choice(USERS, 2000)], args.k)
            runs.append({"u2i_p50_ms": u2i_open["p50_ms"], "u2i_p99_ms": u2i_open["p99_ms"],
                         "u2i2i_p50_ms": u2i2i_open["p50_ms"], "u2i2i_p99_ms": u2i2i_open["p99_ms"],
                         "max_qps": max(c["qps"] for c in closed),
                         "inprocess_p50_ms": baseline["p50_ms"], "inprocess_p99_ms": baseline["p99_ms"],
                         "failed": u2i_open["failed"] + u2i2i_open["failed"] + sum(c["failed"] for c in closed),
                         "open_loop": {"u2i": u2i_open, "u2i2i": u2i2i_open}, "closed_loop_u2i": closed,
                         "load_average_1m": round(os.getloadavg()[0], 1)})
        serve.shutdown()

    spread = {key: spread_of([r[key] for r in runs], 3)
              for key in ("u2i_p50_ms", "u2i_p99_ms", "u2i2i_p50_ms", "u2i2i_p99_ms", "max_qps",
                          "inprocess_p50_ms", "inprocess_p99_ms")}
    median = {key: value["median"] for key, value in spread.items()}
    result = {
        "benchmark": "serve",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "users": USERS, "items": ITEMS, "dim": args.dim, "k": args.k, "index": ref.manifest["index"]["type"],
        "rate_rps": args.rate, "topology": args.topology, "ingress": args.ingress if not args.ray_address else None,
        "load_average_1m": {"start": round(load_start, 1), "end": round(os.getloadavg()[0], 1)},
        **median,  # each figure: the median of the runs
        "http_over_inprocess_p50": round(median["u2i_p50_ms"] / median["inprocess_p50_ms"], 1),
        "failed_requests": sum(r["failed"] for r in runs),
        "spread": spread,
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
