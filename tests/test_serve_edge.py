"""The HTTP edge of the recall service, against real Ray Serve over real HTTP, a real broker and FAISS.

The app here is deployed the way a cluster deploys it: Serve listening on every interface
(0.0.0.0) with the default `serve.auth.mode: auto`, so bearer-token authentication must switch
itself on. Its limits are set tight so that each can be hit in a second or two:

- one Recall replica, 2 requests in flight (`max_ongoing_requests`), 2 queued (`max_queued_requests`);
- a 4096-byte body limit, 1.5 s for a body to arrive, 2 s for an answer;
- `batch_wait_s: 4`: every FAISS search waits 4 s for company, which makes U2I and U2I2I the slow
  requests of these tests (embedding lookups never search, so they stay fast);
- 0.5 cold-text embeddings per second, bursts of 2;
- recent items bounded to 64 KiB.

The snapshot holds one user whose stored vector is NaN (written as the predict job writes user
parts), and its embedder's table holds NaN rows: the real-time paths (a sequence, a new item's
text) compute non-finite vectors from them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from _serve_support import deploy, make_topics, write_token
from precise.config import IndexConfig, KafkaConfig
from precise.events.producer import EventProducer
from precise.predict.embedders import write_vector_table
from precise.predict.index import index_builder
from precise.store.snapshots import SnapshotError, SnapshotStore
from precise.vectors import normalize, vectors_to_arrow

pytestmark = pytest.mark.integration

TASK = "edge"
DIM = 8
ITEMS = [f"i{n}" for n in range(100)]
USERS = [f"u{n}" for n in range(20)]
BODY_LIMIT = 4096
BODY_TIMEOUT_S = 1.5
REQUEST_TIMEOUT_S = 2.0
RECENT_MAX_BYTES = 1 << 16


class Edge:
    def __init__(self, port: int, token: str, topic: str, kafka: KafkaConfig) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.topic = topic
        self.kafka = kafka
        self.auth = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=kw.pop("headers", self.auth), timeout=30, **kw)

    def post(self, path: str, body, **kw) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=kw.pop("headers", self.auth), timeout=30, **kw)

    def recent(self) -> dict:
        return self.get("/v1/version").json()["recent_items"]


def _publish_snapshot(root: Path) -> None:
    """Items i0..i99 and users u0..u19 with finite vectors, plus `u-nan` whose stored vector is
    NaN. The embedder's table gives i99 (an item of the snapshot) and `text-only-nan` (not in it)
    NaN vectors, so real-time vectors from them are NaN."""
    rng = np.random.default_rng(7)
    items = rng.standard_normal((len(ITEMS), DIM)).astype(np.float32)
    users = normalize(rng.standard_normal((len(USERS), DIM)).astype(np.float32))
    table_ids = [*ITEMS, "text-only-nan"]
    table = np.concatenate([items, np.zeros((1, DIM), np.float32)])
    table[[ITEMS.index("i99"), len(ITEMS)]] = np.nan
    table_path = root / "edge-table.parquet"
    write_vector_table(table_path, table_ids, table)
    store = SnapshotStore(root, TASK)
    nan_row = np.full((1, DIM), np.nan, np.float32)
    part = pa.table({"user_id": pa.array([*USERS, "u-nan"]),
                     "vector": vectors_to_arrow(np.concatenate([users, nan_row]))})
    with store.writer() as writer:
        writer.write_items(ITEMS, items)
        with pytest.raises(SnapshotError, match="NaN"):  # the writer never publishes one ...
            writer.write_user_part(part, 0)
        finite = np.concatenate([users, users[:1]])  # u-nan published with a finite stand-in
        writer.write_user_part(pa.table({"user_id": pa.array([*USERS, "u-nan"]),
                                         "vector": vectors_to_arrow(finite)}), 0)
        ref = writer.publish(model_version="edge-1",
                             embedder={"import_path": "precise.predict.embedders:TableEmbedder",
                                       "kwargs": {"items_path": str(table_path), "model_version": "edge-1"}},
                             build_index=index_builder(IndexConfig()))
    # ... so a NaN user reaches a replica only by damage on disk: serving must refuse to use it
    pq.write_table(part, ref.path / "users" / "part-00000.parquet")


@pytest.fixture(scope="module")
def edge(ray_head, kafka_broker, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("edge-root")
    kafka = make_topics(kafka_broker.bootstrap, "edge", partitions=1)
    _publish_snapshot(root)
    token, token_file = write_token(root)
    config = {
        "storage": {"root": str(root)},
        "kafka": kafka.model_dump(),
        "serve": {"task": TASK, "poll_interval_s": 0.5, "recent_backfill_per_partition": 1000,
                  "auth": {"token_file": str(token_file)},  # mode: auto (the default)
                  "max_body_bytes": BODY_LIMIT, "body_timeout_s": BODY_TIMEOUT_S,
                  "request_timeout_s": REQUEST_TIMEOUT_S, "batch_wait_s": 4.0, "batch_max_size": 1000,
                  "cold_text_rate_per_s": 0.5, "cold_text_burst": 2, "recent_max_bytes": RECENT_MAX_BYTES,
                  "recall": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1,
                             "max_ongoing_requests": 2, "max_queued_requests": 2}},
    }
    _, port = deploy(config, root, "edge", host="0.0.0.0")  # every interface, as on a cluster
    service = Edge(port, token, kafka.events_topic, kafka)
    deadline = time.monotonic() + 60
    while service.get("/healthz").status_code != 200 or service.recent().get("partitions") != 1:
        assert time.monotonic() < deadline, "the edge app did not come up"
        time.sleep(0.2)
    yield service
    serve.shutdown()


def _raw(port: int, head: bytes, body_parts: list[bytes], pause_s: float = 0.0, read_timeout: float = 15.0
         ) -> tuple[int, dict, float]:
    """Send `head` and `body_parts` over a plain socket (`pause_s` between parts); return the
    status, the JSON body and the seconds until the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for part in body_parts:
            if pause_s:
                time.sleep(pause_s)
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed while the body was still coming
                break
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - started
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1])
        length = int(next((line.split(b":", 1)[1] for line in head_bytes.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), b"0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, json.loads(rest[:length] or b"{}"), elapsed


def _head(edge: Edge, path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {edge.token}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def _chunked(payload: bytes, size: int) -> list[bytes]:
    parts = [payload[n:n + size] for n in range(0, len(payload), size)]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


# ---- authentication -------------------------------------------------------------------------------


def test_beyond_loopback_every_route_but_healthz_needs_the_token(edge):
    assert requests.get(edge.url + "/healthz", timeout=10).status_code == 200  # probes need no secret
    for method, path in [("GET", "/v1/version"), ("GET", "/openapi.json"), ("GET", "/docs"),
                         ("POST", "/v1/recall/u2i"), ("POST", "/v1/embeddings/items"), ("GET", "/no-such-route")]:
        for headers in [{}, {"Authorization": "Bearer " + "0" * 64}, {"Authorization": f"Basic {edge.token}"},
                        {"Authorization": edge.token}, {"Authorization": f"Bearer {edge.token}x"}]:
            response = requests.request(method, edge.url + path, json={"user_id": "u1"}, headers=headers, timeout=10)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in response.json()["error"]
    assert edge.get("/v1/version").status_code == 200
    assert edge.post("/v1/embeddings/users", {"user_id": "u1"}).status_code == 200
    # the OpenAPI document says so
    spec = edge.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert spec["paths"]["/v1/recall/u2i"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# ---- non-finite vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/recall/u2i", {"user_id": "u-nan", "k": 5, "exclude_seen": False}, "stored vector of user 'u-nan'"),
    ("/v1/embeddings/users", {"user_id": "u-nan"}, "stored vector of user 'u-nan'"),
    ("/v1/recall/u2i", {"item_ids": ["i3", "i99"], "k": 5}, "vector computed from the sequence"),
    ("/v1/embeddings/users", {"item_ids": ["i99"]}, "vector computed from the sequence"),
    ("/v1/embeddings/items", {"item_id": "text-only-nan", "text": "a new film"}, "vector computed from the text"),
])
def test_a_non_finite_vector_is_an_error_never_a_200(edge, path, body, message):
    response = edge.post(path, body)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert message in error and "not finite" in error and "edge-1" in error, error
    assert edge.post("/v1/embeddings/users", {"item_ids": ["i3"]}).status_code == 200  # others still work


# ---- body limit, slow bodies, timeouts, queue ---------------------------------------------------


def test_a_chunked_body_over_the_limit_gets_413(edge):
    big = json.dumps({"item_ids": [f"x{n:03d}" + "y" * 300 for n in range(20)]}).encode()
    assert len(big) > BODY_LIMIT
    status, body, _ = _raw(edge.port, _head(edge, "/v1/embeddings/users", "Transfer-Encoding: chunked\r\n"),
                           _chunked(big, 512))
    assert status == 413 and body["error"] == f"request body over {BODY_LIMIT} bytes", body
    # the same through a client library (requests sends a generator chunked)
    response = requests.post(edge.url + "/v1/embeddings/users", data=iter([big[:2000], big[2000:]]),
                             headers={**edge.auth, "Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413, response.text
    # a declared length over the limit is refused before the body is read
    status, body, _ = _raw(edge.port, _head(edge, "/v1/embeddings/users", f"Content-Length: {len(big)}\r\n"), [big])
    assert status == 413
    # and a chunked body under the limit is served
    small = json.dumps({"item_ids": ["i1", "i2"]}).encode()
    status, body, _ = _raw(edge.port, _head(edge, "/v1/embeddings/users", "Transfer-Encoding: chunked\r\n"),
                           _chunked(small, 5))
    assert status == 200 and body["source"] == "realtime", body


def test_slow_bodies_get_408_and_give_their_replica_slot_back(edge):
    """Two clients that never finish their bodies take both of the replica's slots; each gets 408
    after `body_timeout_s`, and a normal request queued behind them is then answered."""
    payload = json.dumps({"item_ids": ["i1", "i2"]}).encode()
    results: list = []

    def slow(kind: str) -> None:
        extra = f"Content-Length: {len(payload)}\r\n" if kind == "length" else "Transfer-Encoding: chunked\r\n"
        first = payload[:5] if kind == "length" else _chunked(payload, 5)[0]
        results.append(_raw(edge.port, _head(edge, "/v1/embeddings/users", extra), [first]))

    threads = [threading.Thread(target=slow, args=(kind,)) for kind in ("length", "chunked")]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both slow requests are at the replica
    started = time.monotonic()
    queued = edge.post("/v1/embeddings/users", {"item_ids": ["i1", "i2"]})
    waited = time.monotonic() - started
    for t in threads:
        t.join(30)
    assert queued.status_code == 200, queued.text
    assert waited < BODY_TIMEOUT_S + 3, waited
    assert sorted(status for status, _, _ in results) == [408, 408], results
    for _, body, elapsed in results:
        assert "body" in body["error"] and elapsed < BODY_TIMEOUT_S + 3, (body, elapsed)


def test_a_request_over_the_timeout_gets_504(edge):
    started = time.monotonic()
    response = edge.post("/v1/recall/u2i", {"user_id": "u1", "k": 5})  # the search waits 4 s for a batch
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"] == f"no answer within {REQUEST_TIMEOUT_S:g} s"
    assert REQUEST_TIMEOUT_S <= elapsed < REQUEST_TIMEOUT_S + 1.5, elapsed


def test_the_request_queue_is_bounded(edge):
    """12 slow requests at once: 2 in flight, 2 queued, the rest refused at once with 503 (those
    let through are answered when their search batch runs, or time out)."""

    def call(_: int) -> tuple[int, float]:
        started = time.monotonic()
        response = edge.post("/v1/recall/u2i", {"user_id": "u2", "k": 5})
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(12)))
    refused = [elapsed for status, elapsed in results if status == 503]
    assert len(refused) >= 6, results
    assert all(elapsed < 1.5 for elapsed in refused), results  # refused, not queued
    assert {status for status, _ in results} <= {200, 503, 504}, results


# ---- cold-text rate limit -------------------------------------------------------------------------


def test_cold_text_requests_are_rate_limited(edge):
    time.sleep(4.0)  # the bucket refills (0.5/s, burst 2) after the earlier text request
    statuses = []
    for n in range(6):
        response = edge.post("/v1/embeddings/items", {"text": f"a brand new film number {n}"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert "cold-text" in response.json()["error"] and int(response.headers["retry-after"]) >= 1
    assert statuses[:2] == [200, 200] and statuses.count(429) >= 3, statuses
    # stored vectors are never limited
    assert all(edge.post("/v1/embeddings/items", {"item_id": "i4"}).status_code == 200 for _ in range(5))


# ---- recent-items feed ----------------------------------------------------------------------------


def test_version_never_fails_while_partitions_are_assigned(edge):
    """/v1/version reads the feed's per-partition positions while the feed thread assigns new
    partitions: growing the topic to 96 partitions under a stream of /v1/version calls."""
    from kafka.admin import KafkaAdminClient, NewPartitions

    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        session = requests.Session()
        while not stop.is_set():
            statuses.append(session.get(edge.url + "/v1/version", headers=edge.auth, timeout=30).status_code)
        session.close()

    threads = [threading.Thread(target=hammer)]  # with the test's own polling: the replica's 2 slots
    for t in threads:
        t.start()
    admin = KafkaAdminClient(bootstrap_servers=edge.kafka.bootstrap_servers)
    try:
        for total in (32, 64, 96):
            admin.create_partitions({edge.topic: NewPartitions(total_count=total)})
            deadline = time.monotonic() + 30
            while edge.recent()["partitions"] != total:
                assert time.monotonic() < deadline, edge.recent()
                time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        admin.close()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_recent_items_are_bounded_by_bytes_and_over_long_ids_are_rejected(edge):
    before = edge.recent()
    users, per_user = 1500, 3
    with EventProducer(edge.kafka) as producer:
        for u in range(users):
            for n in range(per_user):
                producer.send_event({"event_id": f"r{u}-{n}", "user_id": f"user-{u:05d}", "scene": "s",
                                     "item_id": f"i{(u + n) % 100}", "action": "rate", "ts": 1_700_000_000_000 + n})
        # the validating producer refuses over-long ids, so write them raw, as a foreign producer would
        producer.send_raw(edge.topic, json.dumps({"user_id": "x", "item_id": "i" * 600, "ts": 1}).encode())
        producer.send_raw(edge.topic, json.dumps({"user_id": "u" * 600, "item_id": "i1", "ts": 1}).encode())
        producer.flush()
    deadline = time.monotonic() + 60
    while (recent := edge.recent())["consumed"] + recent["invalid"] < (
            before["consumed"] + before["invalid"] + users * per_user + 2):
        assert time.monotonic() < deadline, recent
        time.sleep(0.2)
    assert recent["invalid"] - before["invalid"] == 2, recent
    assert recent["max_bytes"] == RECENT_MAX_BYTES and 0 < recent["bytes"] <= RECENT_MAX_BYTES, recent
    assert recent["evicted_users"] > 0 and recent["users"] < users, recent
    # the most recently active user is kept
    with EventProducer(edge.kafka) as producer:
        producer.send_event({"event_id": "newest", "user_id": "newest-user", "item_id": "i7", "scene": "s",
                             "action": "rate", "ts": 1_700_000_000_000})
        producer.flush()
    while edge.recent()["consumed"] < recent["consumed"] + 1:
        assert time.monotonic() < deadline + 30, edge.recent()
        time.sleep(0.2)
    newest = edge.post("/v1/recall/u2i2i", {"user_id": "newest-user", "k": 3})
    assert newest.status_code == 504, newest.text  # found, and searching (slow here: batch_wait_s)
