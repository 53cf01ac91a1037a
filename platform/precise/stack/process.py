"""Start long-running services as our own detached process groups, and stop exactly those.

Each service records a pid file when it starts. Stopping signals that pid's whole process tree
(Ray's head forks a dozen helpers), so `stack down` never touches processes it did not start,
such as another Ray instance a test or a user runs on the same machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """A stack service could not be started or stopped; the message says why and what to do."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port from the kernel's ephemeral range (outside Ray's worker ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 25, since: int = 0) -> str:
    """The last `lines` lines of a log, counting only what was written after byte `since`."""
    if not path.is_file():
        return f"(no log at {path})"
    with open(path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def log_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def require_free_ports(host: str, ports: Mapping[str, int], hint: str) -> None:
    """StackError naming the first port in use, and `hint` on how to choose others."""
    for name, port in ports.items():
        if port_in_use(host, port):
            raise StackError(f"{name} port {host}:{port} is already in use by another process; {hint}")


def start_service(cmd: list[str], what: str, stdout_log: Path, pid_path: Path, ready: Callable[[], bool],
                  timeout: float, logs: list[Path], env: dict[str, str] | None = None) -> None:
    """Spawn a service, wait until `ready()`; if it never is, stop it and raise a StackError with
    the tail of each of `logs` written by this start (logs append across restarts)."""
    offsets = {path: log_size(path) for path in logs}
    spawn(cmd, stdout_log, pid_path, env=env)
    try:
        wait_until(ready, timeout, what, alive=lambda: recorded_process(pid_path) is not None)
    except StackError as exc:
        stop_recorded(pid_path)
        tails = "".join(f"\n--- {path} ---\n{log_tail(path, since=offsets[path])}" for path in logs)
        raise StackError(f"{exc}{tails}") from None


def spawn(cmd: list[str], log_path: Path, pid_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start `cmd` in a new session with output to `log_path`; record its pid; return it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "cmd": cmd[:3]}
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, pid_path)
    return proc.pid


def recorded_process(pid_path: Path) -> psutil.Process | None:
    """The live process recorded in `pid_path` (checked by create time against pid reuse)."""
    if not pid_path.is_file():
        return None
    try:
        record = json.loads(pid_path.read_text())
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, ValueError, KeyError, json.JSONDecodeError):
        return None


def stop_recorded(pid_path: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the recorded process tree, SIGKILL what is left after `timeout`; True if it ran."""
    proc = recorded_process(pid_path)
    if proc is None:
        pid_path.unlink(missing_ok=True)
        return False
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = [proc]
    for p in tree[:1]:  # the root forwards SIGTERM to its children and drains them
        p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    pid_path.unlink(missing_ok=True)
    return True


def wait_until(check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool] | None = None,
               interval: float = 0.5) -> None:
    """Poll `check()` until true; raise StackError naming `what` on timeout or if `alive()` fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise StackError(f"{what}: the process exited during start-up")
        time.sleep(interval)
    raise StackError(f"{what}: not ready after {timeout:.0f} s")
