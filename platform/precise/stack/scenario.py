"""The whole platform on the local multi-host cluster (precise.stack.cluster), with faults (issue 14).

Used by tests/test_cluster.py (asserts) and benchmarks/cluster.py (reports). Every step is a job
script (jobs/*.py) run as a driver on the head, so every step ships its code the one way the
platform does (precise.runtime); the Ray nodes cannot import `precise` otherwise.

1. replay the first part of a synthetic stream into the 3-broker cluster (RF 3);
2. ingest continuously while the rest is replayed, killing the leader of events partition 0, then
   (once it is back in sync) the leader of partition 1, a second broker;
3. universal training (2 DDP workers, 2 CPUs each: two different nodes), SIGKILL of a worker node
   holding a training worker after the first checkpoint: Ray Train resumes on the nodes left;
4. targeted training while a worker node's link is down for `link_down_s`;
5. predict + publish, deploy the Serve app (2 replicas, proxies on every node), steady load through
   the proxies with retries across them, SIGKILL of a non-head node holding a replica;
6. checks: the lake against what was produced, registry vs snapshot vs what Serve answers.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from precise.data import SyntheticConfig, generate_synthetic
from precise.data.movielens import EventDataset
from precise.stack.cluster import RAY_NODES, SERVE_PORT, LocalCluster
from precise.stack.process import StackError, wait_until

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[3]


def job(name: str) -> str:
    return str(REPO / "jobs" / f"{name}.py")


def stream(users: int = 300, days: int = 4, seed: int = 3) -> EventDataset:
    return generate_synthetic(SyntheticConfig(users=users, initial_items=120, new_items_per_day=20, days=days,
                                              events_per_second=0.02, seed=seed))


def head_part(dataset: EventDataset, fraction: float) -> EventDataset:
    """The first `fraction` of the events (event-time order) with their items."""
    events = dataset.events.iloc[: int(len(dataset.events) * fraction)]
    items = dataset.items[dataset.items["item_id"].isin(set(events["item_id"]))]
    return EventDataset(dataset.name, events.reset_index(drop=True), items.reset_index(drop=True),
                        int(len(events)))


def platform_config(cluster: LocalCluster, root: Path, tag: str, *, workers: int = 2, epochs: int = 30,
                    serve_token_file: Path | None = None) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": cluster.bootstrap, "events_topic": f"ev-{tag}", "items_topic": f"it-{tag}",
                  "dead_letter_topic": f"ev-{tag}.dlq", "partitions": 3, "replication_factor": 3},
        "storage": {"root": str(root)},
        "ingest": {"interval_s": 1, "read_num_cpus": 0.5, "kafka_timeout_s": 20, "read_timeout_s": 60,
                   "build_sequences": True, "sequence_min_interval_s": 1},
        "sequences": {"max_len": 50, "buckets": 2, "all_scene": {"name": "all", "actions": ["click"]},
                      "targets": [{"name": "like", "actions": ["like"]}]},
        "training": {"model": {"fusion": "id", "max_len": 20, "id_dim": 16, "num_layers": 1, "num_negatives": 16},
                     "universal": {"epochs": epochs}, "targeted": {"epochs": max(2, epochs // 2)},
                     "num_workers": workers, "cpus_per_worker": 2, "threads_per_worker": 1, "max_failures": 3},
        "predict": {"task": f"snap{tag}", "num_actors": 2, "actor_num_cpus": 0.5, "batch_size": 256,
                    "embedder": {"import_path": "precise.predict.model_embedder:RegistryEmbedder",
                                 "kwargs": {"root": str(root), "kind": "targeted", "task": "like"}}},
        "serve": {"task": f"snap{tag}", "poll_interval_s": 1, "recent_enabled": False,
                  "auth": {"mode": "on", "token_file": str(serve_token_file)} if serve_token_file else {},
                  "recall": {"min_replicas": 2, "max_replicas": 2, "num_cpus": 0.25}},
    }


def write_config(raw: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


# ---- where things run (the dashboard's state API, with the token) ------------------------------------


def _state(cluster: LocalCluster, what: str, query: str = "") -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/v0/{what}?limit=10000{query}",
                                     headers={"Authorization": f"Bearer {cluster.ensure_token()}"})
    with urllib.request.urlopen(request, timeout=20) as answer:
        return json.load(answer)["data"]["result"]["result"]


def host_of_node(cluster: LocalCluster) -> dict[str, str]:
    by_ip = {h.address: n for n, h in cluster.hosts.items()}
    return {n["node_id"]: by_ip.get(n["node_ip"], n["node_ip"]) for n in _state(cluster, "nodes")}


def actor_hosts(cluster: LocalCluster, class_part: str) -> list[str]:
    """Hosts (head, w1, w2) of the ALIVE actors whose class name contains `class_part`."""
    hosts = host_of_node(cluster)
    return sorted(hosts.get(a["node_id"], "?") for a in _state(cluster, "actors", "&detail=false")
                  if class_part in (a.get("class_name") or "") and a.get("state") == "ALIVE")


# ---- Serve load ----------------------------------------------------------------------------------


@dataclass
class Load:
    urls: list[str]
    token: str
    users: list[str]
    rate_per_s: float = 10.0
    attempts: int = 4
    requests: int = 0
    failed: int = 0
    retried: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.token}"}
        n = 0
        while not self.stop.is_set():
            began = time.monotonic()
            user = self.users[n % len(self.users)]
            ok = False
            for attempt in range(self.attempts):
                url = self.urls[(n + attempt) % len(self.urls)]
                try:
                    answer = session.post(f"{url}/v1/recall/u2i", json={"user_id": user, "k": 5}, headers=headers,
                                          timeout=5)
                    if answer.status_code == 200:
                        ok = True
                        break
                    self.errors[f"http {answer.status_code}"] += 1
                except requests.RequestException as exc:
                    self.errors[type(exc).__name__] += 1
                self.retried += 1
                time.sleep(0.2)
            self.requests += 1
            self.failed += 0 if ok else 1
            n += 1
            self.stop.wait(max(0.0, 1.0 / self.rate_per_s - (time.monotonic() - began)))


# ---- steps -----------------------------------------------------------------------------------------


def wait_checkpoint(storage: Path, since: float, timeout: float, driver: subprocess.Popen[str]) -> None:
    def any_checkpoint() -> bool:
        return any(p.stat().st_mtime > since for p in storage.glob("*/checkpoint_*")) if storage.is_dir() else False

    wait_until(any_checkpoint, timeout, "the first training checkpoint", interval=1.0,
               alive=lambda: driver.poll() is None)


def start_driver(cluster: LocalCluster, args: list[str], log_path: Path) -> subprocess.Popen[str]:
    cwd = cluster.state_dir / "drivers"
    cwd.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "w")  # noqa: SIM115 - closed by finish_driver
    return subprocess.Popen(cluster.driver_cmd(*args), cwd=cwd, env=cluster.driver_env(), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def finish_driver(proc: subprocess.Popen[str], log_path: Path, timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise StackError(f"driver timed out; see {log_path}") from None
    text = log_path.read_text()
    if proc.returncode != 0:
        raise StackError(f"driver exited {proc.returncode}:\n{text[-4000:]}")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def lake_check(root: Path, produced: list[str]) -> dict[str, int]:
    from precise.store.lake import read_events

    ids = read_events(root, columns=["event_id"]).column("event_id").to_pylist()
    counts = Counter(ids)
    wanted = set(produced)
    return {"events_produced": len(wanted), "events_in_lake": len(ids),
            "events_lost": len(wanted - set(counts)),
            "events_duplicated": sum(c - 1 for c in counts.values() if c > 1),
            "events_unexpected": len(set(counts) - wanted)}


def ingest_until(cluster: LocalCluster, config_path: Path, events_topic: str, expected: int, logs: Path,
                 faults: list[Any], timeout: float = 900.0) -> dict[str, Any]:
    """Continuous ingest while `faults` (callables, in order) run; stop it once the ledger holds
    `expected` records of the events topic."""
    from precise.store.lake import read_events

    proc = start_driver(cluster, [job("ingest"), "--config", str(config_path)], logs / "ingest.log")
    root = Path(yaml.safe_load(config_path.read_text())["storage"]["root"])
    began = time.monotonic()
    try:
        for fault in faults:
            fault()
        def caught_up() -> bool:
            if proc.poll() is not None:
                raise StackError(f"ingest exited {proc.returncode}: {(logs / 'ingest.log').read_text()[-3000:]}")
            try:
                return read_events(root, columns=["event_id"]).num_rows >= expected
            except Exception:  # noqa: BLE001 - no lake yet
                return False
        wait_until(caught_up, timeout, "ingest of every produced event", interval=2.0)
        time.sleep(3)  # one more poll: a duplicate would land now
    finally:
        proc.send_signal(signal.SIGTERM)
    return {**finish_driver(proc, logs / "ingest.log", 120), "wall_s": round(time.monotonic() - began, 1)}


def run_scenario(cluster: LocalCluster, work: Path, link_down_s: float = 20.0,
                 serve_load_s: float = 40.0) -> dict[str, Any]:
    """Steps 1-6; a dict of what happened (the test asserts on it, the benchmark prints it)."""
    from precise.events.replay import replay
    from precise.store.registry import ModelRegistry
    from precise.store.snapshots import SnapshotStore, read_users

    tag = uuid.uuid4().hex[:6]
    root, logs = work / f"root-{tag}", work / f"logs-{tag}"
    logs.mkdir(parents=True, exist_ok=True)
    token_file = work / "serve-token"
    token_file.write_text(uuid.uuid4().hex + "\n")
    token_file.chmod(0o600)
    raw = platform_config(cluster, root, tag, serve_token_file=token_file)
    config_path = write_config(raw, work / f"platform-{tag}.yaml")
    from precise.config import PreciseConfig

    config = PreciseConfig.model_validate(raw)
    data = stream()
    out: dict[str, Any] = {"tag": tag, "nodes": len(RAY_NODES), "brokers": 3,
                           "universal_epochs": raw["training"]["universal"]["epochs"]}
    events_topic = config.kafka.events_topic

    # 1-2: replay the first 40 %, then ingest while the rest trickles in and two brokers die in turn
    replay(head_part(data, 0.4), config.kafka, progress=False)
    broker_faults: list[dict[str, Any]] = []

    def rest_replay() -> None:
        span_s = (data.events["ts"].max() - data.events["ts"].min()) / 1000 * 0.6
        replay(data, config.kafka, speed=span_s / 30, progress=False)  # the other 60 % over ~30 s

    replayer = threading.Thread(target=rest_replay, name="replay", daemon=True)

    def kill_leader(partition: int) -> Any:
        def fault() -> None:
            time.sleep(6)
            leader = cluster.partition_leader(events_topic, partition)
            cluster.kill_broker(leader)
            broker_faults.append({"killed": leader, "partition": partition, "at_s": round(time.monotonic(), 1)})
            time.sleep(8)
            cluster.start_broker(leader)
            wait_until(lambda: cluster.broker_ready(leader), 180, f"broker {leader} back", interval=2.0)
            cluster.wait_full_isr(events_topic, 180)
        return fault

    out["ingest"] = ingest_until(cluster, config_path, events_topic, len(data.events), logs,
                                 [replayer.start, kill_leader(0), replayer.join, kill_leader(1)])
    out["broker_faults"] = broker_faults
    out.update(lake_check(root, data.events["event_id"].tolist()))

    # 3: universal training, a worker node SIGKILLed after the first checkpoint
    storage = root / "ray_results"
    began = time.time()
    proc = start_driver(cluster, [job("universal"), "--config", str(config_path), "--full"], logs / "universal.log")
    wait_checkpoint(storage, began, 600, proc)
    # Ray Train registers a reported checkpoint once its controller has polled every worker's
    # report (about once a second): a kill right after the first checkpoint file appears can beat
    # that, and the run then restarts from scratch. Let a few epochs register first.
    time.sleep(6)
    hosts = actor_hosts(cluster, "RayTrainWorker")
    out["train_worker_hosts"] = hosts
    out["train_worker_nodes"] = len(set(hosts))
    victim = next((h for h in hosts if h != "head"), None)
    if victim is None:
        raise StackError(f"no training worker on a worker node: {hosts}")
    out["killed_train_host"] = victim
    out["killed_processes"] = cluster.kill_host(victim)
    universal = finish_driver(proc, logs / "universal.log", 900)
    out["universal"] = universal
    out["train_resumed_from_epoch"] = universal.get("resumed_from_epoch")
    out["train_hosts_after_kill"] = sorted(set(actor_hosts(cluster, "RayTrainWorker")))  # gone once done
    cluster.start_ray_node(victim)
    wait_until(lambda: cluster.ray_nodes_alive() >= len(RAY_NODES), 180, "the killed node back", interval=2.0)

    # 4: targeted training with a worker node's link down for `link_down_s`
    proc = start_driver(cluster, [job("targeted"), "--config", str(config_path)], logs / "targeted.log")
    wait_checkpoint(storage, time.time() - 1, 600, proc)
    link_host = next((h for h in actor_hosts(cluster, "RayTrainWorker") if h != "head"), "w2")
    cluster.link_outage(link_host, link_down_s)
    out["link_outage"] = {"host": link_host, "seconds": link_down_s}
    out["targeted"] = finish_driver(proc, logs / "targeted.log", 900)
    wait_until(lambda: cluster.ray_nodes_alive() >= len(RAY_NODES), 180, "all nodes after the outage", interval=2.0)

    # 5: predict + publish, Serve, steady load, a replica's node killed
    out["predict"] = cluster.run_driver(job("predict"), "--config", str(config_path), log=logs / "predict.log")
    out["deploy"] = cluster.run_driver(job("deploy_serve"), "--config", str(config_path), "--host", "0.0.0.0",
                                       "--port", str(SERVE_PORT), log=logs / "deploy.log")
    urls = [f"http://{cluster.hosts[n].address}:{SERVE_PORT}" for n in RAY_NODES]
    snapshot = SnapshotStore(root, config.predict.task).latest()
    users = read_users(snapshot)[0][:50]
    token = token_file.read_text().strip()
    version = _wait_version(urls[0], token)
    out["replica_hosts"] = actor_hosts(cluster, "ServeReplica")
    load = Load(urls, token, list(users))
    loader = threading.Thread(target=load.run, name="serve-load", daemon=True)
    loader.start()
    time.sleep(serve_load_s / 4)
    serve_victim = next((h for h in out["replica_hosts"] if h != "head"), None)
    if serve_victim is not None:
        cluster.kill_host(serve_victim)
    out["killed_serve_host"] = serve_victim
    time.sleep(serve_load_s / 2)
    out["replica_hosts_after_kill"] = actor_hosts(cluster, "ServeReplica")
    time.sleep(serve_load_s / 4)
    load.stop.set()
    loader.join(30)
    out.update({"serve_requests": load.requests, "serve_failed_requests": load.failed,
                "serve_retried_attempts": load.retried, "serve_errors": dict(load.errors)})
    if serve_victim is not None:
        cluster.start_ray_node(serve_victim)

    # 6: registry vs snapshot vs Serve
    registry = ModelRegistry(root)
    targeted = registry.latest("targeted", "like")
    out["consistency"] = {
        "snapshot_version": snapshot.version, "snapshot_model": snapshot.manifest["model_version"],
        "registry_targeted": targeted.ref, "serve_snapshot": version.get("snapshot_version"),
        "serve_model": version.get("model_version"),
        "targeted_warm_started_from": targeted.metadata.get("warm_started_from"),
        "registry_universal": registry.latest("universal").ref,
    }
    return out


def _wait_version(url: str, token: str, timeout: float = 300.0) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def ready() -> bool:
        try:
            answer = requests.get(f"{url}/v1/version", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        except requests.RequestException:
            return False
        if answer.status_code == 200 and answer.json().get("snapshot_version"):
            got.update(answer.json())
            return True
        return False

    wait_until(ready, timeout, "Serve answering /v1/version", interval=2.0)
    return got


def measure_rates(cluster: LocalCluster, work: Path, nodes: int, data: EventDataset, epochs: int = 3) -> dict[str, Any]:
    """Ingest (--once, a fresh lake) and universal training rates with `nodes` Ray nodes up (1: the
    head alone, the worker nodes stopped; 3: all). Fault-free."""
    from precise.events.replay import replay

    stopped = [n for n in RAY_NODES[nodes:]]
    for name in stopped:
        cluster.stop_ray_node(name)
    try:
        wait_until(lambda: cluster.ray_nodes_alive() == nodes, 120, f"{nodes} Ray node(s)", interval=2.0)
        tag = uuid.uuid4().hex[:6]
        root = work / f"rates{nodes}-{tag}"
        workers = 1 if nodes == 1 else 2
        raw = platform_config(cluster, root, tag, workers=workers, epochs=epochs)
        raw["ingest"]["read_num_cpus"] = 0.5
        if nodes == 1:
            raw["training"]["cpus_per_worker"] = 1
        path = write_config(raw, work / f"rates{nodes}-{tag}.yaml")
        from precise.config import PreciseConfig

        replay(data, PreciseConfig.model_validate(raw).kafka, progress=False)
        logs = work / f"rates{nodes}-{tag}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        ingest = cluster.run_driver(job("ingest"), "--config", str(path), "--once", log=logs / "ingest.log")
        ingest_s = time.monotonic() - began
        began = time.monotonic()
        universal = cluster.run_driver(job("universal"), "--config", str(path), "--full", log=logs / "universal.log")
        train_s = time.monotonic() - began
        return {"nodes": nodes, "events": len(data.events), "ingest_job_s": round(ingest_s, 1),
                "ingest_events_per_s": round(len(data.events) / ingest_s, 1), "ingest_summary": ingest,
                "train_workers": workers, "train_job_s": round(train_s, 1),
                "train_samples_per_s": universal.get("samples_per_s")}
    finally:
        for name in stopped:
            cluster.start_ray_node(name)
        wait_until(lambda: cluster.ray_nodes_alive() == len(RAY_NODES), 180, "all Ray nodes", interval=2.0)
