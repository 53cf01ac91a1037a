"""Helpers shared by the ingest integration tests: configs, the job as a subprocess, lake checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from precise.config import KafkaConfig
from precise.events.topics import end_offsets
from precise.ingest.compact import superseded
from precise.store.files import TMP_PREFIX, Files
from precise.store.lake import Layout, event_files, load_ledger

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, kafka: KafkaConfig, root: Path, ingest: dict[str, Any] | None = None,
                 sequences: dict[str, Any] | None = None) -> Path:
    """An ingest config (YAML) for `kafka` (its client_options included) and the lake at `root`."""
    config = {
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "events_topic": kafka.events_topic,
                  "items_topic": kafka.items_topic, "dead_letter_topic": kafka.dead_letter_topic,
                  "partitions": kafka.partitions, "client_options": dict(kafka.client_options)},
        "storage": {"root": str(root)},
        "ingest": {"interval_s": 0.5, "read_timeout_s": 10, "kafka_timeout_s": 5, "retry_backoff_s": 0.5,
                   "retry_backoff_max_s": 4, "build_sequences": False, **(ingest or {})},
    }
    if sequences is not None:
        config["sequences"] = sequences
    path.write_text(yaml.safe_dump(config))
    return path


class JobProcess:
    """`python jobs/ingest.py ...` as a child process; its stderr is collected line by line."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "ingest.py"), "--config", str(config), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        self.lines: list[str] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a stderr line contains `text`; fails if the job exits first."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"job exited ({self.proc.returncode}) before {text!r}:\n{self.log[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.log[-4000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.finish(30)

    def finish(self, timeout: float) -> int:
        try:
            self.stdout, rest = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, rest = self.proc.communicate()
            raise
        self._reader.join(5)
        # communicate() and the reader thread share stderr: keep what communicate() took
        self.lines.extend(line.rstrip() for line in (rest or "").splitlines())
        return self.proc.returncode


def wait_until(check: Callable[[], bool], timeout: float, what: str, alive: JobProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if alive is not None:
            assert alive.proc.poll() is None, f"job exited ({alive.proc.returncode}):\n{alive.log[-4000:]}"
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s" + (
            f"\n{alive.log[-4000:]}" if alive else "")
        time.sleep(0.25)


def caught_up(root: Path, kafka: KafkaConfig) -> bool:
    """The ledger covers every record now in the events and items topics."""
    ledger = load_ledger(Files(str(root)))
    for topic in (kafka.events_topic, kafka.items_topic):
        for partition, end in end_offsets(kafka.bootstrap_servers, topic).items():
            if end and ledger.next_offset(topic, partition) != end:
                return False
    return True


def assert_clean_lake(root: Path) -> None:
    """No temporary files, and every data file committed by the ledger."""
    storage = Files(str(root))
    layout = Layout(storage)
    leftovers = storage.temp_files(layout.lake)
    assert not leftovers, leftovers
    data = [p for p in storage.list_files(layout.events) if p.endswith(".parquet")]
    data = [p for p in data if p not in superseded(data)]  # merged by a compaction, awaiting deletion
    assert sorted(data) == sorted(event_files(storage)), "uncommitted event files in the lake"
    assert not any(Path(p).name.startswith(TMP_PREFIX) for p in data)
