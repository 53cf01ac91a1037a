"""The local stack: idempotent up/down of a real broker and Ray head, and clear start-up errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from precise.config import LocalKafkaConfig, LocalRayConfig, StackConfig
from precise.stack import KafkaBroker, LocalStack, StackError
from precise.stack.process import free_port, recorded_process

pytestmark = pytest.mark.integration


def _stack_config(tmp_path) -> StackConfig:
    return StackConfig(
        state_dir=str(tmp_path / "stack"),
        kafka=LocalKafkaConfig(port=free_port(), controller_port=free_port(), heap="384m"),
        ray=LocalRayConfig(gcs_port=free_port(), dashboard_port=free_port(), client_port=free_port(),
                           agent_port=free_port(), metrics_port=free_port(), num_cpus=1),
    )


def test_stack_up_down_is_idempotent_and_stops_only_its_own(tmp_path, kafka_broker):
    config = _stack_config(tmp_path)
    stack = LocalStack(config)
    stack.ray.temp_dir = tmp_path.parent / f"prs-{config.ray.gcs_port}"
    try:
        info = stack.up()
        assert info["topics"] == {"behavior-events": 4, "item-catalog": 4, "behavior-events.dlq": 1}
        pids = (recorded_process(stack.kafka.pid_path).pid, recorded_process(stack.ray.pid_path).pid)
        stack.up()  # a second up changes nothing
        assert pids == (recorded_process(stack.kafka.pid_path).pid, recorded_process(stack.ray.pid_path).pid)
        status = stack.status()
        assert status["kafka"]["running"] and status["ray"]["dashboard_healthy"]
        assert status["metrics"]["answering"], status["metrics"]
        assert status["metrics"]["url"] == f"http://127.0.0.1:{config.ray.metrics_port}/metrics"
        # the dashboard requires the token
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{stack.ray.dashboard_url}/api/version", timeout=5)
        assert denied.value.code in (401, 403)
        assert "RAY_AUTH_MODE=token" in stack.env_file.read_text()
    finally:
        first = stack.down()
    assert first == {"ray": True, "kafka": True}
    assert stack.down() == {"ray": False, "kafka": False}
    assert not stack.status()["kafka"]["running"]
    assert kafka_broker.running(), "down must not stop a broker it did not start"


def test_port_in_use_is_reported(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = KafkaBroker(tmp_path / "k", port=port, controller_port=free_port())
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is already in use"):
            broker.start()


def test_missing_java_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    broker = KafkaBroker(tmp_path / "k", port=free_port(), controller_port=free_port())
    with pytest.raises(StackError, match="java is not on PATH"):
        broker.start()


def test_cli_status_and_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stack:\n  kafka:\n    prot: 1\n")
    result = subprocess.run([sys.executable, "-m", "precise.cli", "stack", "status", "--config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "stack.kafka.prot: Extra inputs are not permitted" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(f"stack:\n  state_dir: {tmp_path / 'none'}\n  kafka:\n    port: {free_port()}\n")
    result = subprocess.run([sys.executable, "-m", "precise.cli", "stack", "status", "--config", str(good)],
                            capture_output=True, text=True)
    assert result.returncode == 3  # nothing running
    assert "Kafka  DOWN" in result.stdout and "Ray    DOWN" in result.stdout
    assert "Metrics http://127.0.0.1:8090/metrics (not answering)" in result.stdout
