"""Visible training: a training job submitted to a real Ray cluster shows one line per epoch in its
job log (`ray job logs` and the dashboard's job page both read it through the dashboard's job API,
as JobSubmissionClient does here) while it runs, not only the final summary; a person who runs the
job in a terminal also sees a progress bar over each epoch's batches."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from _ingest_support import REPO

pytestmark = pytest.mark.integration

EPOCH_LINE = re.compile(r"\[universal/all\] epoch (\d+)/(\d+) loss \d+\.\d+ \(\d+ samples/s\) "
                        r"val recall_at_10 \d\.\d+ ndcg_at_10 \d\.\d+( eta \d+s)?")
SUMMARY_KEY = '"model": "universal/'


def epoch_numbers(logs: str) -> list[int]:
    return [int(m.group(1)) for m in EPOCH_LINE.finditer(logs)]


def training_config(ml100k_copy, tmp_path: Path, epochs: int) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    config = ml100k_copy(root, training={
        "model": {"max_len": 50, "id_dim": 16, "text_dim": 16, "token_dim": 16, "num_layers": 1,
                  "num_negatives": 32, "dropout": 0.1},
        "text": {"model": "hashed", "max_tokens": 8}, "universal": {"epochs": epochs, "batch_size": 128},
        "num_workers": 1, "cpus_per_worker": 0.5})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_job_log_shows_every_epoch_while_it_runs(ml100k_copy, ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    epochs = 4
    config = training_config(ml100k_copy, tmp_path, epochs)
    client = JobSubmissionClient(ray_head.dashboard_url)
    job = client.submit_job(entrypoint=f"python jobs/universal.py --config {config}",
                            runtime_env={"working_dir": str(REPO)})
    running: list[int] = []  # the epochs in the log read while the job ran and had not printed its summary
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        logs = client.get_job_logs(job)
        status = client.get_job_status(job)  # after the read: the job was running when the log was read
        if status == JobStatus.RUNNING and not running and SUMMARY_KEY not in logs:
            running = epoch_numbers(logs)
        if status.is_terminal():
            break
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert running, f"no epoch line in the job log while the job was running:\n{logs[-3000:]}"
    assert epoch_numbers(logs) == list(range(1, epochs + 1)), logs[-3000:]  # one line per epoch, once each
    lines = [m.group(0) for m in EPOCH_LINE.finditer(logs)]
    assert all(" eta " in line for line in lines[:-1]) and " eta " not in lines[-1]
    assert "__ray_tqdm_magic_token__" not in logs and "\r" not in logs  # no progress bar in a job's log
    summary = json.loads(next(line for line in reversed(logs.splitlines()) if line.startswith("{")))
    assert summary["model"] == "universal/000001" and summary["epoch"] == epochs


def test_terminal_shows_a_progress_bar(ml100k_copy, ray_head, tmp_path):
    """The driver run in a (pseudo-)terminal: tqdm bars over each epoch's batches on it, the epoch
    lines still there once each, and the bar's transport (tqdm_ray's state lines) never shown."""
    epochs = 2
    config = training_config(ml100k_copy, tmp_path, epochs)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # tqdm draws nothing at 0 columns
    process = subprocess.Popen([sys.executable, "jobs/universal.py", "--config", str(config)], cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=os.environ.copy())
    os.close(follower)
    screen = bytearray()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(timeout=60) == 0, screen.decode(errors="replace")[-3000:]
    text = screen.decode(errors="replace")
    bars = re.findall(r"\[universal/all\] epoch (\d)/2: +\d+%\|", text)
    assert {"1", "2"} <= set(bars), text[-3000:]  # a bar per epoch, redrawn as batches go by
    assert re.search(r"100%\|[^\r\n]*\| ([\d.]+)/\1 ", text), text[-3000:]  # a bar reaches its total (8.0/8.0)
    assert "__ray_tqdm_magic_token__" not in text
    assert epoch_numbers(text) == list(range(1, epochs + 1)), text[-3000:]
