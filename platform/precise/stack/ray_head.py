"""A local Ray head (`ray start --head --block`) with the dashboard and token authentication.

`--block` keeps every Ray process a child of the one we spawn, in its own process group, so
stopping it stops exactly this cluster. The auth token lives in the state folder; every client
(ray.init, `ray job submit`, the dashboard's HTTP API) needs `RAY_AUTH_MODE=token` and
`RAY_AUTH_TOKEN_PATH` pointing at it, which `client_env()` provides.

Serve's HTTP ingress is chosen when the head starts (Ray reads it from the environment of its
processes): `haproxy` (the default) puts Ray's bundled HAProxy on Serve's HTTP port, forwarding
straight to the replicas' own HTTP servers (Ray's "direct ingress", with its throughput-optimised
settings); `proxy` is Serve's Python proxy actor, one more process and actor call per request.
docs/performance.md has the measurements behind the default.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from precise.paths import precise_home, repo_root
from precise.stack.process import (
    StackError,
    free_port,
    log_tail,
    recorded_process,
    require_free_ports,
    start_service,
    stop_recorded,
)

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass
class RayHead:
    """One Ray head node on loopback; its token, temp dir and pid under `state_dir`.

    Explicit ports stay outside Ray's default worker-port range (10002-19999) and apart from a
    second instance's, so a test cluster can run beside the local stack.
    """

    state_dir: Path
    gcs_port: int = 6379
    dashboard_port: int = 8265
    client_port: int = 10001
    agent_port: int = 52365
    metrics_port: int = 8090
    num_cpus: int = 2
    host: str = "127.0.0.1"
    temp_dir: Path | None = None  # Ray's session dir; keep short (unix socket path limit)
    serve_ingress: str = "haproxy"  # haproxy | proxy (stack.ray.serve_ingress)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "auth_token"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "ray.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "ray-start.log"

    @property
    def session_dir(self) -> Path:
        """Ray's --temp-dir for this head (HAProxy's config lives in its `haproxy` folder)."""
        return self.temp_dir or Path("/tmp") / f"precise-ray-{self.gcs_port}"

    def running(self) -> bool:
        return recorded_process(self.pid_path) is not None

    def ensure_token(self) -> str:
        """The cluster's bearer token, generated on first use into a file created mode 600: no
        moment where another user could read it (writing first and restricting after leaves one)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_path.is_file() or not self.token_path.read_text().strip():
            tmp = self.token_path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)  # a leftover of a crash, perhaps with other permissions
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            os.replace(tmp, self.token_path)
        return self.token_path.read_text().strip()

    def client_env(self) -> dict[str, str]:
        """Environment variables a client needs to reach this cluster."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            # Ray rewrites a loopback --node-ip-address to the machine's routable address unless
            # it runs in single-node mode (its macOS default): keep every Ray service on loopback.
            # This local head is single-node by design; a real cluster runs on KubeRay.
            LOOPBACK_ENV: "0",
        }

    def serve_ingress_env(self, temp_dir: Path) -> dict[str, str]:
        """Environment that selects Serve's HTTP ingress for every process of this cluster."""
        if self.serve_ingress == "proxy":
            return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
        if self.serve_ingress != "haproxy":
            raise StackError(f"stack.ray.serve_ingress must be haproxy or proxy, not {self.serve_ingress!r}")
        # HAProxy's side ports default to fixed numbers (8404, 9101): give this head its own, so a
        # test cluster or a benchmark can run beside the stack; its files (which Ray puts in a
        # folder per node) go in this head's session dir, removed with it.
        haproxy = temp_dir / "haproxy"
        haproxy.mkdir(parents=True, exist_ok=True)
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            # (replicas bind their own HTTP servers to http_options.host, as the proxy would)
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port(self.host)),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port(self.host)),
            # A replica being replaced waits this long for load balancers to drop it; HAProxy on
            # the same node learns it at once from the controller (Ray's default is 30 s).
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        }

    def start(self, timeout: float = 120.0) -> None:
        """Start the head (idempotent); wait until the dashboard answers with the token and the
        metrics endpoint answers."""
        if self.running():
            return
        ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
        if ray is None:
            raise StackError("the `ray` command is not installed; run scripts/setup")
        ports = {"Ray gcs": self.gcs_port, "Ray dashboard": self.dashboard_port, "Ray client": self.client_port,
                 "Ray dashboard agent": self.agent_port, "Ray metrics": self.metrics_port}
        require_free_ports(self.host, ports, "another Ray? (`ray status`); stop it or set other ports in the "
                                             "stack config")
        self.ensure_token()
        temp_dir = self.session_dir
        cmd = [ray, "start", "--head", "--block", f"--node-ip-address={self.host}",
               f"--port={self.gcs_port}", "--include-dashboard=true",
               f"--dashboard-host={self.host}", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={self.client_port}",
               f"--dashboard-agent-listen-port={self.agent_port}",
               f"--metrics-export-port={self.metrics_port}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        env = {**os.environ, **self.client_env(), **self.serve_ingress_env(temp_dir)}
        env.pop("RAY_ADDRESS")  # the head must not try to join a cluster
        # Jobs run from a copy of the working dir (`ray job submit --working-dir .`) and Serve
        # replicas from the head's environment: pin the platform's home so all of them find the
        # same lake, registry and snapshots as the CLI.
        env.setdefault("PRECISE_HOME", str(precise_home()))
        # Job entrypoints say `python ...`: make that the interpreter this platform is installed in.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        if (root := repo_root()) is not None:
            # `serve deploy configs/serve.yaml` imports `serve.app` in the cluster's workers, which
            # have no driver to ship code from: put this checkout (and its `precise`) on their path.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), str(root / "platform"),
                                                            env.get("PYTHONPATH", "")) if p)
        start_service(cmd, f"Ray head on {self.address}", self.log_path, self.pid_path,
                      lambda: self.dashboard_ready() and self.metrics_ready(), timeout, logs=[self.log_path], env=env)

    def dashboard_ready(self) -> bool:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/version",
            headers={"Authorization": f"Bearer {self.ensure_token()}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def metrics_ready(self) -> bool:
        """The Prometheus endpoint answers (the metrics agent starts a moment after the dashboard)."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 45.0) -> bool:
        """Stop the head this object started, with every Ray process under it."""
        return stop_recorded(self.pid_path, timeout)

    def log_tail(self) -> str:
        return log_tail(self.log_path)
