"""A local multi-host cluster on one Linux machine: network namespaces, a Ray cluster of three
nodes and a 3-broker KRaft Kafka cluster, with fault helpers (issue 14).

    sudo scripts/cluster up | status | down        (root: `ip netns` needs CAP_NET_ADMIN)

Every host is a network namespace (`ip netns`) with its own private address on a bridge
(10.214.14.0/24 by default): `head` (Ray head), `w1`, `w2` (Ray worker nodes), `k1`..`k3` (Kafka
brokers, each broker+controller: replication 3, min.insync.replicas 2). The machine itself is the
bridge's gateway (.1), so clients here reach every host; a host's link can be taken down.

The Ray nodes run from a *node environment*: a venv whose only site directory is the project
venv's site-packages, without the project's editable install (no `precise` on its path). So only
code a job ships in its runtime environment (precise.runtime) can run there. Drivers (jobs) run in
the head's namespace with the project's interpreter and cwd in the state folder, as `ray job
submit` would run them there. Token authentication is on for every Ray node and client.

Faults: `kill_host` (SIGKILL a Ray node's raylet and every process of it), `kill_broker`,
`partition_leader`, `link_down` / `link_up`. State (logs, pids, data) under `state_dir`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from precise.stack.kafka import kafka_jars
from precise.stack.process import StackError, log_tail, port_in_use, recorded_process, spawn, wait_until

RAY_NODES = ("head", "w1", "w2")
BROKERS = ("k1", "k2", "k3")
KAFKA_PORT, CONTROLLER_PORT = 9092, 9093
GCS_PORT, DASHBOARD_PORT, SERVE_PORT = 6379, 8265, 8000


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


@dataclass
class Host:
    name: str
    address: str
    prefix: str

    @property
    def netns(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def veth(self) -> str:  # the machine's end of the host's link (<= 15 characters)
        return f"{self.prefix}v{self.name}"[:15]

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@dataclass
class LocalCluster:
    """The harness. `prefix` names the namespaces, links and bridge; `subnet` is a /24 (x.y.z)."""

    state_dir: Path
    prefix: str = "c14"
    subnet: str = "10.214.14"
    worker_cpus: int = 3
    head_cpus: int = 3
    broker_heap: str = "256m"
    hosts: dict[str, Host] = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        numbers = {"head": 10, "w1": 11, "w2": 12, "k1": 21, "k2": 22, "k3": 23}
        self.hosts = {n: Host(n, f"{self.subnet}.{i}", self.prefix) for n, i in numbers.items()}

    # ---- addresses -------------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.hosts[b].address}:{KAFKA_PORT}" for b in BROKERS)

    @property
    def ray_address(self) -> str:
        return f"{self.hosts['head'].address}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.hosts['head'].address}:{DASHBOARD_PORT}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "ray_token"

    @property
    def node_python(self) -> Path:
        return self.state_dir / "nodeenv" / "bin" / "python"

    def client_env(self) -> dict[str, str]:
        """What a Ray client (driver, `ray job submit`, `serve`) needs to reach this cluster."""
        return {"RAY_ADDRESS": self.ray_address, "RAY_API_SERVER_ADDRESS": self.dashboard_url,
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_USAGE_STATS_ENABLED": "0"}

    # ---- network ---------------------------------------------------------------------------------

    def net_up(self) -> None:
        if shutil.which("ip") is None:
            raise StackError("`ip` (iproute2) is not installed: apt-get install iproute2")
        if _run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        existing = set(_run("ip", "netns", "list").stdout.split())
        for host in self.hosts.values():
            if host.netns in existing:
                continue
            _run("ip", "netns", "add", host.netns)
            _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _run("ip", "link", "set", host.veth, "master", self.bridge, "up")
            ns = host.exec_prefix()
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run(*ns, "ip", "link", "set", "eth0", "up")
            _run(*ns, "ip", "route", "add", "default", "via", self.gateway)
        # bridged frames may pass through iptables (br_netfilter): let this bridge's traffic through
        for chain in ("FORWARD",):
            rule = ["-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            if shutil.which("iptables") and _run("iptables", "-C", chain, *rule, check=False).returncode != 0:
                _run("iptables", "-I", chain, *rule, check=False)

    def net_down(self) -> None:
        for host in self.hosts.values():
            _run("ip", "link", "del", host.veth, check=False)
            _run("ip", "netns", "del", host.netns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        if shutil.which("iptables"):
            _run("iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT", check=False)

    def link_down(self, name: str) -> None:
        """Cut host `name` off the network (its end of the link goes down: no packet in or out)."""
        _run("ip", "link", "set", self.hosts[name].veth, "down")

    def link_up(self, name: str) -> None:
        _run("ip", "link", "set", self.hosts[name].veth, "up")

    def link_outage(self, name: str, seconds: float) -> None:
        self.link_down(name)
        try:
            time.sleep(seconds)
        finally:
            self.link_up(name)

    # ---- the node environment --------------------------------------------------------------------

    def node_env(self) -> Path:
        """A venv with the dependencies (the project venv's site-packages) but not the project."""
        python = self.node_python
        if not python.is_file():
            base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            _run(str(base), "-m", "venv", "--without-pip", str(python.parents[1]))
        site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
        # A plain path line: that directory joins sys.path, but its own .pth files (the project's
        # editable install among them) are not processed, so `precise` stays out.
        (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        probe = _run(str(python), "-c", "import ray, torch, pyarrow; import precise", check=False)
        if "No module named 'precise'" not in probe.stderr:
            raise StackError(f"the node environment must lack the project but does not: {probe.stderr[-500:]}")
        return python

    def node_imports_precise(self, name: str = "w1") -> bool:
        """Whether host `name`'s node environment can import `precise` (it must not)."""
        probe = _run(*self.hosts[name].exec_prefix(), str(self.node_python), "-c", "import precise", check=False)
        return probe.returncode == 0

    # ---- Kafka -----------------------------------------------------------------------------------

    def _broker_dir(self, name: str) -> Path:
        return self.state_dir / "kafka" / name

    def _broker_config(self, name: str) -> Path:
        node_id = BROKERS.index(name) + 1
        address = self.hosts[name].address
        voters = ",".join(f"{i + 1}@{self.hosts[b].address}:{CONTROLLER_PORT}" for i, b in enumerate(BROKERS))
        props = {
            "process.roles": "broker,controller", "node.id": str(node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{address}:{KAFKA_PORT},CONTROLLER://{address}:{CONTROLLER_PORT}",
            "advertised.listeners": f"PLAINTEXT://{address}:{KAFKA_PORT}",
            "controller.listener.names": "CONTROLLER", "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._broker_dir(name) / "data"),
            "default.replication.factor": "3", "min.insync.replicas": "2",
            "offsets.topic.replication.factor": "3", "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "3", "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": "3", "share.coordinator.state.topic.min.isr": "2",
            "unclean.leader.election.enable": "false", "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0", "message.max.bytes": str(2 * 1024 * 1024),
            # a killed broker is noticed within seconds, not the default 9 s + 18 s
            "broker.session.timeout.ms": "6000", "broker.heartbeat.interval.ms": "1000",
        }
        directory = self._broker_dir(name)
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        path = directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (directory / "log4j2.properties").write_text(
            "status = warn\nappender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {directory / 'logs' / 'server.log'}\n"
            "appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = FILE\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n")
        return path

    def start_broker(self, name: str) -> None:
        directory = self._broker_dir(name)
        if recorded_process(directory / "kafka.pid") is not None:
            return
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH (Kafka needs Java 17+)")
        config = self._broker_config(name)
        classpath = f"{kafka_jars()}/*"
        if not (directory / "data" / "meta.properties").is_file():
            cluster_file = self.state_dir / "kafka" / "cluster_id"
            if not cluster_file.is_file():
                cluster_file.write_text(uuid.uuid4().hex[:22])
            _run(java, "-Xmx128m", "-cp", classpath, "kafka.tools.StorageTool", "format", "-t",
                 cluster_file.read_text().strip(), "-c", str(config))
        cmd = [*self.hosts[name].exec_prefix(), java, f"-Xmx{self.broker_heap}", f"-Xms{self.broker_heap}",
               "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", f"-Dkafka.logs.dir={directory / 'logs'}",
               f"-Dlog4j2.configurationFile={directory / 'log4j2.properties'}", "-cp", classpath,
               "kafka.Kafka", str(config)]
        spawn(cmd, directory / "logs" / "stdout.log", directory / "kafka.pid")

    def broker_ready(self, name: str) -> bool:
        log = self._broker_dir(name) / "logs" / "server.log"
        return (port_in_use(self.hosts[name].address, KAFKA_PORT) and log.is_file()
                and b"Kafka Server started" in log.read_bytes())

    def kill_broker(self, name: str) -> None:
        """SIGKILL broker `name` (no clean shutdown: the controller notices it missing)."""
        proc = recorded_process(self._broker_dir(name) / "kafka.pid")
        if proc is not None:
            proc.kill()
            proc.wait(10)
        # the next start must wait for *its* "started" line
        log = self._broker_dir(name) / "logs" / "server.log"
        if log.is_file():
            log.rename(log.with_name(f"server.{int(time.time() * 1000)}.log"))

    def broker_of(self, node_id: int) -> str:
        return BROKERS[node_id - 1]

    def partition_leader(self, topic: str, partition: int = 0, timeout: float = 30.0) -> str:
        """The broker (k1..k3) leading `topic`'s `partition`, from the cluster's metadata."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            (described,) = admin.describe_topics([topic])
            for p in described["partitions"]:
                if p["partition_index"] == partition and p["leader_id"] >= 0:
                    return self.broker_of(p["leader_id"])
        finally:
            admin.close()
        raise StackError(f"{topic}[{partition}] has no leader")

    def isr(self, topic: str) -> dict[int, list[int]]:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=20000)
        try:
            (described,) = admin.describe_topics([topic])
            return {p["partition_index"]: sorted(p["isr_nodes"]) for p in described["partitions"]}
        finally:
            admin.close()

    def wait_full_isr(self, topic: str, timeout: float = 120.0) -> None:
        """Until every partition of `topic` has all three replicas in sync (a restarted broker caught up)."""
        def full() -> bool:
            try:
                return all(len(r) == len(BROKERS) for r in self.isr(topic).values())
            except Exception:  # noqa: BLE001 - metadata unavailable while brokers move: retry
                return False
        wait_until(full, timeout, f"{topic}: all replicas in sync", interval=1.0)

    # ---- Ray -------------------------------------------------------------------------------------

    def _ray_dir(self, name: str) -> Path:
        return self.state_dir / "ray" / name

    def _ray_temp(self, name: str) -> str:
        return f"/tmp/{self.prefix}-ray-{name}"  # short: unix socket paths are limited to 107 bytes

    def ensure_token(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_path.is_file():
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        return self.token_path.read_text().strip()

    def start_ray_node(self, name: str) -> None:
        directory = self._ray_dir(name)
        if recorded_process(directory / "ray.pid") is not None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        host = self.hosts[name]
        common = ["--block", f"--node-ip-address={host.address}", f"--temp-dir={self._ray_temp(name)}",
                  "--disable-usage-stats", f"--resources={json.dumps({f'host_{name}': 1})}"]
        if name == "head":
            role = ["--head", f"--port={GCS_PORT}", "--include-dashboard=true", f"--dashboard-host={host.address}",
                    f"--dashboard-port={DASHBOARD_PORT}", f"--num-cpus={self.head_cpus}"]
        else:
            role = [f"--address={self.ray_address}", f"--num-cpus={self.worker_cpus}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(self.client_env())
        env.pop("RAY_ADDRESS")
        env.pop("RAY_API_SERVER_ADDRESS")
        # workers start with the node environment's interpreter; nothing of the project on its path
        env["PATH"] = os.pathsep.join([str(self.node_python.parent), env.get("PATH", "")])
        env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    # the host name resolves to loopback in a namespace: gloo (DDP on CPU) must
                    # bind the host's own interface, or its peers on other hosts cannot connect
                    "GLOO_SOCKET_IFNAME": "eth0"})
        cmd = [*host.exec_prefix(), str(self.node_python), "-m", "ray.scripts.scripts", "start", *role, *common]
        spawn(cmd, directory / "ray-start.log", directory / "ray.pid", env=env, cwd=directory)

    def ray_nodes_alive(self) -> int:
        """Alive nodes, as the GCS sees them (the dashboard's API, with the token)."""
        import urllib.request

        request = urllib.request.Request(f"{self.dashboard_url}/nodes?view=summary",
                                         headers={"Authorization": f"Bearer {self.ensure_token()}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                data = json.load(answer)
        except Exception:  # noqa: BLE001 - not up yet
            return 0
        return sum(1 for n in data["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE")

    def kill_host(self, name: str) -> int:
        """SIGKILL Ray node `name`: `ray start`, its raylet, and every worker process; returns how many."""
        proc = recorded_process(self._ray_dir(name) / "ray.pid")
        if proc is None:
            return 0
        victims = [proc, *proc.children(recursive=True)]
        # workers are the raylet's children, but make sure: anything whose cmdline names this node's temp dir
        temp = self._ray_temp(name)
        for p in psutil.process_iter(["cmdline"]):
            if p not in victims and any(temp in part for part in (p.info["cmdline"] or [])):
                victims.append(p)
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)
        return len(victims)

    def stop_ray_node(self, name: str) -> None:
        proc = recorded_process(self._ray_dir(name) / "ray.pid")
        if proc is None:
            return
        tree = [proc, *proc.children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.kill_host(name)  # leftovers of the node's session (workers reparented to init)

    # ---- the whole ---------------------------------------------------------------------------------

    def up(self, timeout: float = 300.0) -> dict[str, Any]:
        began = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.net_up()
        self.node_env()
        self.ensure_token()
        for name in BROKERS:
            self.start_broker(name)
        self.start_ray_node("head")
        wait_until(lambda: self.ray_nodes_alive() >= 1, timeout, "Ray head", interval=2.0)
        for name in RAY_NODES[1:]:
            self.start_ray_node(name)
        wait_until(lambda: all(self.broker_ready(b) for b in BROKERS), timeout, "3 Kafka brokers", interval=2.0)
        wait_until(lambda: self.ray_nodes_alive() >= len(RAY_NODES), timeout, "3 Ray nodes", interval=2.0)
        return {**self.status(), "seconds": round(time.monotonic() - began, 1)}

    def down(self) -> None:
        for name in reversed(RAY_NODES):
            self.stop_ray_node(name)
        for name in BROKERS:
            self.kill_broker(name)
        self.net_down()
        for name in RAY_NODES:
            shutil.rmtree(self._ray_temp(name), ignore_errors=True)

    def status(self) -> dict[str, Any]:
        return {
            "hosts": {n: h.address for n, h in self.hosts.items()},
            "bootstrap": self.bootstrap, "ray_address": self.ray_address, "dashboard": self.dashboard_url,
            "brokers_up": [b for b in BROKERS if self.broker_ready(b)],
            "ray_nodes_alive": self.ray_nodes_alive(),
            "node_env_imports_precise": self.node_imports_precise() if self.node_python.is_file() else None,
            "state_dir": str(self.state_dir),
        }

    # ---- drivers ---------------------------------------------------------------------------------

    def driver_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.client_env())
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        env.pop("PYTHONPATH", None)
        env.update(extra or {})
        return env

    def driver_cmd(self, *args: str) -> list[str]:
        """A command run in the head's namespace (a job driver), with the project's interpreter."""
        return [*self.hosts["head"].exec_prefix(), sys.executable, *args]

    def run_driver(self, *args: str, timeout: float = 1800.0, log: Path | None = None) -> dict[str, Any]:
        """Run a job script (jobs/*.py) as a driver on the head; its JSON summary line."""
        cwd = self.state_dir / "drivers"
        cwd.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(self.driver_cmd(*args), cwd=cwd, env=self.driver_env(), capture_output=True,
                                text=True, timeout=timeout)
        if log is not None:
            log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
        if result.returncode != 0:
            raise StackError(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise StackError(f"{' '.join(args)} printed no JSON summary:\n{result.stdout[-2000:]}")
        return json.loads(lines[-1])

    def logs(self, name: str, lines: int = 30) -> str:
        if name in BROKERS:
            return log_tail(self._broker_dir(name) / "logs" / "server.log", lines)
        return log_tail(self._ray_dir(name) / "ray-start.log", lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "kill-host", "kill-broker", "link-down",
                                           "link-up", "link-outage"])
    parser.add_argument("target", nargs="?", help="host (head, w1, w2) or broker (k1..k3)")
    parser.add_argument("--seconds", type=float, default=20.0, help="link-outage: how long")
    parser.add_argument("--state-dir", default=os.environ.get("PRECISE_CLUSTER_DIR", ".precise/cluster"))
    parser.add_argument("--prefix", default="c14", help="names of the namespaces, links and bridge")
    parser.add_argument("--subnet", default="10.214.14", help="the hosts' /24 (first three octets)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(Path(args.state_dir), prefix=args.prefix, subnet=args.subnet)
    if os.geteuid() != 0:
        print("error: the harness needs root (ip netns)", file=sys.stderr)
        return 2
    try:
        if args.action == "up":
            print(json.dumps(cluster.up()))
        elif args.action == "down":
            cluster.down()
            print(json.dumps({"down": True}))
        elif args.action == "status":
            print(json.dumps(cluster.status()))
        else:
            if not args.target:
                parser.error(f"{args.action} needs a target")
            action = {"kill-host": cluster.kill_host, "kill-broker": cluster.kill_broker,
                      "link-down": cluster.link_down, "link-up": cluster.link_up,
                      "link-outage": lambda t: cluster.link_outage(t, args.seconds)}[args.action]
            action(args.target)
            print(json.dumps({args.action: args.target}))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
