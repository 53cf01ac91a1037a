"""The recall service end to end: real Ray Serve on the test Ray head, real HTTP, real FAISS, real Kafka.

One deployment serves the whole module, in order: every endpoint against a snapshot of fixed
random vectors (answers compared with brute-force numpy), bad requests, an OpenAPI fuzzer, a hot
swap under load, and finally the predict job (Ray Data) publishing snapshots with a cold item.
Bearer-token authentication is on (`serve.auth.mode: on`, the token in a file), as it is wherever
Serve listens beyond loopback: every request of the module carries the token, and the fuzzer
checks that requests without it, or with a wrong one, are refused.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from _serve_support import deploy, make_topics, write_token
from precise.config import KafkaConfig
from precise.events.producer import EventProducer
from precise.predict.demo import RandomVectors, publish_random_snapshot
from precise.predict.embedders import HashingTextEncoder, TableEmbedder
from precise.vectors import normalize

pytestmark = pytest.mark.integration

TASK = "t"
DIM = 16
NOW_MS = int(time.time() * 1000)
# user -> items, oldest first (u0..u3 are in the snapshot; "fresh" is newer than the user snapshot)
HISTORY = {"u0": ["i1", "i2", "i3"], "u1": ["i10", "i11"], "u2": ["i20"], "u3": ["i5", "i6", "i7", "i8"],
           "fresh": ["i30", "i31", "i32"]}


@dataclass
class Service:
    url: str
    root: Path
    config_path: Path
    kafka: KafkaConfig
    token: str
    vectors: dict[str, RandomVectors] = field(default_factory=dict)  # snapshot version -> vectors
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def post(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.session.post(self.url + path, json=body, timeout=30, **kw)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=30)

    def wait_for_version(self, version: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/v1/version").json().get("snapshot_version") == version:
                return
            time.sleep(0.2)
        raise AssertionError(f"service did not switch to {version}: {self.get('/v1/version').json()}")


def expected_u2i(vecs: RandomVectors, query: np.ndarray, k: int, exclude: set[str] = frozenset()) -> list:
    scores = vecs.items @ query
    order = [i for i in np.argsort(-scores, kind="stable") if vecs.item_ids[i] not in exclude][:k]
    return [(vecs.item_ids[i], float(scores[i])) for i in order]


def hits(response: dict) -> list:
    return [(h["item_id"], h["score"]) for h in response["items"]]


def assert_same_ranking(got: list, want: list) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-4)


def sequence_vector(vecs: RandomVectors, item_ids: list[str]) -> np.ndarray:
    emb = TableEmbedder(str(vecs.table_path), model_version="unused")
    return normalize(emb.embed_user_sequence(item_ids))


@pytest.fixture(scope="module")
def service(ray_head, kafka_broker, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve-root")
    kafka = make_topics(kafka_broker.bootstrap, "app", partitions=2)
    ref, vecs = publish_random_snapshot(root, TASK, users=60, items=400, dim=DIM, seed=1, model_version="m-1")
    with EventProducer(kafka) as producer:
        for user, items in HISTORY.items():
            for n, item in enumerate(items):
                producer.send_event({"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "scene": "s",
                                     "action": "rate", "ts": NOW_MS - 100_000 + n, "value": 4.0})
        producer.flush()
    token, token_file = write_token(root)
    config = {
        "storage": {"root": str(root)},
        "kafka": kafka.model_dump(),
        "serve": {"task": TASK, "poll_interval_s": 0.25, "recent_backfill_per_partition": 1000,
                  "auth": {"mode": "on", "token_file": str(token_file)},
                  "max_body_bytes": 200_000,
                  "ingress": {"min_replicas": 1, "max_replicas": 2, "num_cpus": 0.1},
                  "recall": {"min_replicas": 1, "max_replicas": 2, "num_cpus": 0.1}},
        "predict": {"task": TASK, "actor_num_cpus": 0.25, "batch_size": 128,
                    "embedder": {"kwargs": {"items_path": str(vecs.table_path), "model_version": "table-1"}}},
    }
    config_path, port = deploy(config, root, "precise")
    svc = Service(f"http://127.0.0.1:{port}", root, config_path, kafka, token, {ref.version: vecs})
    deadline = time.monotonic() + 60
    while True:  # the recent-items consumer has read every event
        recent = svc.get("/v1/version").json().get("recent_items") or {}
        if recent.get("consumed") == sum(len(v) for v in HISTORY.values()):
            break
        assert time.monotonic() < deadline, f"recent items not consumed: {recent}"
        time.sleep(0.2)
    yield svc
    svc.session.close()
    serve.shutdown()


def test_health_version_and_openapi(service):
    health = service.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "snapshot_version": "000001",
                                                           "detail": None}
    version = service.get("/v1/version").json()
    assert version["snapshot_version"] == "000001" and version["model_version"] == "m-1"
    assert (version["num_items"], version["num_users"], version["dim"]) == (400, 60, DIM)
    assert version["index"]["type"] == "flat_ip" and version["index"]["recall_at_k"] == 1.0
    assert version["recent_items"]["users"] == len(HISTORY) and version["recent_items"]["lag"] == 0
    paths = service.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/version", "/v1/embeddings/users", "/v1/embeddings/items", "/v1/recall/u2i",
            "/v1/recall/u2i2i"} <= set(paths)


def test_http_goes_through_the_heads_own_haproxy(service, ray_head):
    """stack.ray.serve_ingress haproxy (the default): Ray's HAProxy, with this head's own config
    file, listens on Serve's port and forwards to the replicas' HTTP servers."""
    import psutil

    port = int(service.url.rsplit(":", 1)[1])
    config_files = list((ray_head.session_dir / "haproxy").glob("*/haproxy.cfg"))  # one per node
    listeners = [c.pid for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listeners, f"nothing listens on {port}"
    owners = [psutil.Process(pid) for pid in listeners if pid]
    assert any("haproxy" in Path(o.exe()).name for o in owners), [o.cmdline() for o in owners]
    assert len(config_files) == 1 and f"bind 127.0.0.1:{port}" in config_files[0].read_text()
    assert service.get("/v1/version").status_code == 200


def test_u2i_exact_index_equals_brute_force(service):
    vecs = service.vectors["000001"]
    for user in ["u7", "u42"]:  # no recent items: nothing to exclude
        got = service.post("/v1/recall/u2i", {"user_id": user, "k": 25}).json()
        assert got["snapshot_version"] == "000001" and got["model_version"] == "m-1" and got["query"] == "user_vector"
        assert_same_ranking(hits(got), expected_u2i(vecs, vecs.users[vecs.user_ids.index(user)], 25))
    # exclude_seen drops the user's recent items (from the live stream), and only those
    u0 = vecs.users[0]
    assert_same_ranking(hits(service.post("/v1/recall/u2i", {"user_id": "u0", "k": 30}).json()),
                        expected_u2i(vecs, u0, 30, set(HISTORY["u0"])))
    assert_same_ranking(hits(service.post("/v1/recall/u2i", {"user_id": "u0", "k": 30, "exclude_seen": False}).json()),
                        expected_u2i(vecs, u0, 30))
    # k = every item
    assert len(service.post("/v1/recall/u2i", {"user_id": "u9", "k": 1000}).json()["items"]) == 400


def test_u2i_from_a_sequence_and_for_a_user_newer_than_the_snapshot(service):
    vecs = service.vectors["000001"]
    seq = ["i4", "i9", "i16"]
    got = service.post("/v1/recall/u2i", {"item_ids": seq, "k": 10}).json()
    assert got["query"] == "sequence"
    assert_same_ranking(hits(got), expected_u2i(vecs, sequence_vector(vecs, seq), 10, set(seq)))
    # "fresh" has no stored vector: embedded in real time from its recent live items
    got = service.post("/v1/recall/u2i", {"user_id": "fresh", "k": 10}).json()
    assert got["query"] == "sequence"
    want = expected_u2i(vecs, sequence_vector(vecs, HISTORY["fresh"]), 10, set(HISTORY["fresh"]))
    assert_same_ranking(hits(got), want)


def test_u2i2i_merges_neighbours_of_recent_items(service):
    vecs = service.vectors["000001"]
    got = service.post("/v1/recall/u2i2i", {"user_id": "u3", "k": 15}).json()
    seeds = list(reversed(HISTORY["u3"]))  # most recent first
    assert got["seeds"] == seeds and got["query"] == "recent_items"
    rows = [vecs.item_ids.index(s) for s in seeds]
    sims = vecs.items[rows] @ vecs.items.T  # [seeds, items]
    best = {}
    for seed_rank, row in enumerate(sims):
        for item, score in enumerate(row):
            item_id = vecs.item_ids[item]
            if item_id in seeds:
                continue
            if item_id not in best or score > best[item_id][0]:
                best[item_id] = (score, seed_rank)
    want = sorted(best.items(), key=lambda kv: -kv[1][0])[:15]
    assert [h["item_id"] for h in got["items"]] == [i for i, _ in want]
    assert [h["seed_item_id"] for h in got["items"]] == [seeds[s] for _, (_, s) in want]
    # by sequence: the given items are the seeds, newest first
    got = service.post("/v1/recall/u2i2i", {"item_ids": ["i1", "i2"], "k": 5}).json()
    assert got["seeds"] == ["i2", "i1"] and len(got["items"]) == 5
    assert not {"i1", "i2"} & {h["item_id"] for h in got["items"]}


def test_embeddings(service):
    vecs = service.vectors["000001"]
    got = service.post("/v1/embeddings/users", {"user_id": "u5"}).json()
    assert got["source"] == "snapshot" and np.allclose(got["vector"], vecs.users[5], atol=1e-6)
    got = service.post("/v1/embeddings/users", {"item_ids": ["i1", "unknown-item", "i2"]}).json()
    assert got["source"] == "realtime" and got["ignored_item_ids"] == ["unknown-item"]
    assert np.allclose(got["vector"], sequence_vector(vecs, ["i1", "i2"]), atol=1e-5)
    got = service.post("/v1/embeddings/users", {"user_id": "fresh"}).json()
    assert got["source"] == "realtime"
    got = service.post("/v1/embeddings/items", {"item_id": "i7"}).json()
    assert got["source"] == "snapshot" and got["dim"] == DIM and np.allclose(got["vector"], vecs.items[7], atol=1e-6)
    text = "a brand new documentary about deep sea creatures"
    got = service.post("/v1/embeddings/items", {"text": text}).json()
    assert got["source"] == "text" and got["snapshot_version"] == "000001"
    assert np.allclose(got["vector"], normalize(HashingTextEncoder(DIM).encode(text)), atol=1e-5)


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/recall/u2i", {"user_id": "nobody"}, 404, "'nobody' is not in snapshot"),
    ("/v1/recall/u2i", {"item_ids": ["x", "y"]}, 404, "none of the 2 item ids"),
    ("/v1/recall/u2i2i", {"user_id": "u50"}, 404, "no recent events"),
    ("/v1/embeddings/users", {"user_id": "nobody"}, 404, "not in snapshot"),
    ("/v1/embeddings/items", {"item_id": "nothing"}, 404, "send its text"),
    ("/v1/embeddings/items", {"text": "!!! ..."}, 422, "no word to embed"),
    ("/v1/recall/u2i", {"user_id": "u1", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/v1/recall/u2i", {"user_id": "u1", "k": 1001}, 422, "less than or equal to 1000"),
    ("/v1/recall/u2i", {"user_id": "u1", "item_ids": ["a"]}, 422, "exactly one of user_id or item_ids"),
    ("/v1/recall/u2i", {"user_id": "u1", "kk": 3}, 422, "kk: Extra inputs are not permitted"),
    ("/v1/recall/u2i", {"item_ids": ["a"] * 201}, 422, "at most 200 items"),
    ("/v1/embeddings/items", {"text": "x" * 16_385}, 422, "at most 16384 characters"),
    ("/v1/recall/u2i", [1, 2], 422, "invalid request"),
])
def test_bad_requests_get_4xx_with_a_reason(service, path, body, status, message):
    response = service.post(path, body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_malformed_and_oversized_bodies(service):
    response = service.session.post(service.url + "/v1/recall/u2i", data=b"{not json", timeout=10,
                                    headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["error"]
    response = service.session.post(service.url + "/v1/recall/u2i", data=b"x" * 200_001, timeout=10,
                                    headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "request body over 200000 bytes"
    assert service.post("/v1/recall/u2i", {"item_ids": ["i1"] * 200, "k": 1}).status_code == 200


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzzing_finds_no_server_error(service, mode):
    """Schemathesis generates requests from /openapi.json for every operation, schema-valid
    (positive) or not (negative), with the bearer token: no 5xx, and every answer conforms to the
    documented status codes, content type and response schema. `ignored_auth` sends each secured
    operation again without the token and with a wrong one: both must get 401. 150 examples per
    mode keep it at about 20 s."""
    from schemathesis.auths import AuthStorage
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        ignored_auth,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(service.url + "/openapi.json", headers=dict(service.session.headers))
    secured = [path for path, operations in schema.raw_schema["paths"].items()
               if any(op.get("security") == [{"bearer": []}] for op in operations.values())]
    assert sorted(secured) == sorted(set(schema.raw_schema["paths"]) - {"/healthz"}), secured

    class Bearer:
        def get(self, case, context):
            return service.token

        def set(self, case, token, context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    auth = AuthStorage()
    auth.auth(refresh_interval=None, retry_on=[])(Bearer)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              ignored_auth]
    statuses: Counter = Counter()
    plain = requests.Session()  # no default token: each case carries what the fuzzer gives it

    @given(case=schema.as_strategy(generation_mode=GenerationMode(mode), auth_storage=auth))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def fuzz(case):
        response = case.call_and_validate(base_url=service.url, session=plain, timeout=30, checks=checks)
        statuses[response.status_code] += 1

    try:
        fuzz()
    finally:
        plain.close()
    assert not any(code >= 500 for code in statuses), statuses
    if mode == "negative":
        assert set(statuses) <= {400, 401, 404, 413, 422}, statuses
    else:
        assert statuses[200] > 0, statuses


def test_requests_without_the_token_get_401(service):
    spec = service.get("/openapi.json").json()
    anonymous = requests.Session()
    try:
        for path, operations in spec["paths"].items():
            for method in operations:
                for headers in [{}, {"Authorization": "Bearer wrong-token-0123456789"}]:
                    response = anonymous.request(method, service.url + path, json={"user_id": "u1"},
                                                 headers=headers, timeout=30)
                    if path == "/healthz":
                        assert response.status_code == 200, response.text
                    else:
                        assert response.status_code == 401, (method, path, response.text)
                        assert response.json() == {
                            "error": "missing or invalid bearer token: send 'Authorization: Bearer <token>'"}
    finally:
        anonymous.close()


def test_hot_swap_under_load_never_mixes_versions(service):
    """Threads send U2I requests (stored users and real-time sequences) without pause while two new
    snapshots are published; every answer must be exactly the brute-force answer of the version it
    names. Each version has its own random vectors, so a user vector or embedder of one version
    combined with the index of another would give different items and scores."""
    users = ["u0", "u3", "u7", "u11", "u42"]
    sequences = [["i1", "i2"], ["i100", "i5", "i77"]]
    expected: dict[str, dict[Any, list]] = {}

    def expect(version: str, vecs: RandomVectors) -> None:
        table = {}
        for user in users:
            table[user] = expected_u2i(vecs, vecs.users[vecs.user_ids.index(user)], 10, set(HISTORY.get(user, [])))
        for seq in sequences:
            table[tuple(seq)] = expected_u2i(vecs, sequence_vector(vecs, seq), 10, set(seq))
        expected[version] = table

    expect("000001", service.vectors["000001"])
    results: list[tuple[Any, int, dict | str]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        rng = random.Random(worker)
        session = requests.Session()
        session.headers.update(service.session.headers)  # the bearer token
        deadline = time.monotonic() + 120  # bounded in time and count
        for _ in range(20_000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            if rng.random() < 0.5:
                key: Any = rng.choice(users)
                body = {"user_id": key, "k": 10}
            else:
                key = tuple(rng.choice(sequences))
                body = {"item_ids": list(key), "k": 10}
            try:
                r = session.post(service.url + "/v1/recall/u2i", json=body, timeout=30)
                results.append((key, r.status_code, r.json() if r.status_code == 200 else r.text))
            except requests.RequestException as exc:
                results.append((key, -1, str(exc)))
        session.close()

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for seed, model in [(2, "m-2"), (3, "m-3")]:
            time.sleep(1.0)
            ref, vecs = publish_random_snapshot(service.root, TASK, users=60, items=400, dim=DIM, seed=seed,
                                                model_version=model)
            expect(ref.version, vecs)
            service.vectors[ref.version] = vecs
            service.wait_for_version(ref.version)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
    seen = Counter(body["snapshot_version"] for _, _, body in results)
    assert set(seen) <= {"000001", "000002", "000003"} and {"000002", "000003"} <= set(seen), seen
    models = {"000001": "m-1", "000002": "m-2", "000003": "m-3"}
    for key, _, body in results:
        version = body["snapshot_version"]
        assert body["model_version"] == models[version]
        assert_same_ranking(hits(body), expected[version][key])
    assert len(results) > 100, len(results)


def test_predict_job_publishes_and_a_cold_item_enters_recall(service):
    """jobs/predict.py's library (Ray Data actor pool over the lake's catalogue and sequences, which
    the ingest job built from the stream) makes a snapshot the service swaps to; an item that exists
    only in `item-catalog`, with text and no vector anywhere, gets an embedding from its text in the
    next items cycle and is recalled."""
    from precise.config import load_config
    from precise.ingest.job import IngestJob
    from precise.predict.job import run_predict

    cfg = load_config(service.config_path)
    with EventProducer(service.kafka) as producer:
        for n in range(400):
            producer.send_item({"item_id": f"i{n}", "text": f"film {n} genre {n % 7}", "created_ts": NOW_MS})
        producer.flush()
    IngestJob(cfg).run_once()
    result = run_predict(cfg, cycle="all")
    manifest = result.snapshot.manifest
    assert (manifest["num_items"], manifest["model_version"]) == (400, "table-1")
    assert manifest["num_users"] == len(HISTORY)  # users from the lake's sequences of the stream
    assert manifest["sources"]["items_from"] == "lake" and manifest["sources"]["users_from"] == "lake"
    assert manifest["sequence_rules"]["family"] == "all"
    from precise.store.snapshots import read_user_tails

    assert read_user_tails(result.snapshot) == HISTORY  # the tails real-time serving extends
    all_version = result.snapshot.version
    service.wait_for_version(all_version)

    cold_text = "a completely new documentary about deep sea creatures"
    assert service.post("/v1/embeddings/items", {"item_id": "cold-1"}).status_code == 404
    assert service.post("/v1/embeddings/items", {"item_id": "i7"}).status_code == 200
    with EventProducer(service.kafka) as producer:
        producer.send_item({"item_id": "cold-1", "text": cold_text, "created_ts": NOW_MS})
        producer.delete_item("i7")
        producer.flush()
    IngestJob(cfg).run_once()
    # the orchestrator's item cycle: only the new item is embedded, with the model of LATEST, and
    # published as an item delta over it (its users, its index) with the deletion
    from precise.pipeline.orchestrator import Pipeline

    summary = Pipeline(cfg).run_item_cycle(boundary=0)
    assert summary["users_reused_from"] == all_version and summary["items"] == 400  # +1 new, -1 deleted
    assert (summary["embedded"], summary["new"], summary["deleted"]) == (1, 1, 1)
    assert summary["model_version"] == manifest["model_version"]
    service.wait_for_version(summary["version"])
    assert service.post("/v1/embeddings/items", {"item_id": "i7"}).status_code == 404  # left the index
    everything = service.post("/v1/recall/u2i", {"user_id": "u0", "k": 400, "exclude_seen": False}).json()
    assert len(everything["items"]) == 400 and "i7" not in {h["item_id"] for h in everything["items"]}
    assert everything["snapshot_version"] == summary["version"]

    got = service.post("/v1/embeddings/items", {"item_id": "cold-1"}).json()
    assert got["model_version"] == manifest["model_version"] and got["snapshot_version"] == summary["version"]
    cold = normalize(HashingTextEncoder(DIM).encode(cold_text))
    assert got["source"] == "snapshot" and np.allclose(got["vector"], cold, atol=1e-5)
    # the user closest to the new item gets it in U2I, exactly where brute force puts it
    from precise.store.snapshots import SnapshotStore, read_items, read_users

    ref = SnapshotStore(service.root, TASK).get(summary["version"])
    item_ids, items = read_items(ref)
    user_ids, users = read_users(ref)
    best_user = int(np.argmax(users @ cold))
    scores = items @ users[best_user]
    rank = int(np.where(np.argsort(-scores, kind="stable") == item_ids.index("cold-1"))[0][0])
    got = service.post("/v1/recall/u2i", {"user_id": user_ids[best_user], "k": rank + 1,
                                          "exclude_seen": False}).json()
    assert got["items"][-1]["item_id"] == "cold-1"
    assert [h["item_id"] for h in got["items"]] == [item_ids[i] for i in np.argsort(-scores, kind="stable")[:rank + 1]]


def test_split_topology_gives_the_same_answers(service):
    """The same app with a separate Ingress deployment in front of Recall (serve.topology: split)."""
    from ray import serve

    from serve.app import app

    version = service.get("/v1/version").json()["snapshot_version"]
    single = [service.post("/v1/recall/u2i", {"user_id": u, "k": 20, "exclude_seen": False}).json()
              for u in ("u0", "u3")]
    serve.run(app({"config": str(service.config_path), "topology": "split"}), name="precise", route_prefix="/")
    status = serve.status().applications["precise"]
    assert set(status.deployments) == {"Ingress", "Recall"}
    service.wait_for_version(version)
    split = [service.post("/v1/recall/u2i", {"user_id": u, "k": 20, "exclude_seen": False}).json()
             for u in ("u0", "u3")]
    for a, b in zip(single, split, strict=True):
        assert a["snapshot_version"] == b["snapshot_version"] and [h["item_id"] for h in a["items"]] == [
            h["item_id"] for h in b["items"]]
    assert service.post("/v1/recall/u2i", {"user_id": "u1", "k": 0}).status_code == 422
    assert service.post("/v1/recall/u2i", {"user_id": "nobody"}).status_code == 404
