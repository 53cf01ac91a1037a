"""`serve deploy configs/serve.yaml` on a running cluster, as an operator would do it (CLI, REST)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from precise.predict.demo import publish_random_snapshot
from precise.stack.process import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _serve_cli() -> str:
    return shutil.which("serve", path=os.path.dirname(sys.executable)) or "serve"


def test_serve_deploy_of_the_shipped_config(ray_head, kafka_broker, tmp_path):
    root = tmp_path / "root"
    _, vecs = publish_random_snapshot(root, "default", users=20, items=50, dim=8, seed=0, model_version="m")
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port  # the shipped file as it is, but on free ports and a temp root
    config["applications"][0]["args"].update({"root": str(root), "kafka_bootstrap": kafka_broker.bootstrap})
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    address = ["--address", ray_head.dashboard_url]
    subprocess.run([_serve_cli(), "shutdown", "-y", *address], check=False, capture_output=True, timeout=120)
    deployed = subprocess.run([_serve_cli(), "deploy", str(path), *address], capture_output=True, text=True,
                              timeout=120)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            status = subprocess.run([_serve_cli(), "status", *address], capture_output=True, text=True).stdout
            assert "DEPLOY_FAILED" not in status and time.monotonic() < deadline, status
            time.sleep(2)
        got = requests.post(f"http://127.0.0.1:{port}/v1/recall/u2i", json={"user_id": "u1", "k": 5}, timeout=30)
        assert got.status_code == 200 and got.json()["snapshot_version"] == "000001"
        assert got.json()["items"][0]["item_id"] == vecs.item_ids[int((vecs.items @ vecs.users[1]).argmax())]
    finally:
        subprocess.run([_serve_cli(), "shutdown", "-y", *address], check=False, capture_output=True, timeout=120)
