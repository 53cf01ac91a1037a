"""The ingest job as a Ray job: `ray job submit --working-dir . -- python jobs/ingest.py ... --once`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from _ingest_support import REPO, write_config
from precise.events.producer import EventProducer
from precise.events.topics import ensure_topics
from precise.store.lake import read_events, read_items
from precise.store.sequences import read_sequences

pytestmark = pytest.mark.integration


def test_ingest_runs_under_ray_job_submit(kafka_config, ray_head, tmp_path):
    ensure_topics(kafka_config)
    with EventProducer(kafka_config) as producer:
        for i in range(300):
            producer.send_event({"event_id": f"j-{i}", "user_id": f"u{i % 10}", "item_id": f"i{i % 5}",
                                 "scene": "s", "action": "rate", "ts": 1_700_000_000_000 + i})
        for i in range(5):
            producer.send_item({"item_id": f"i{i}", "text": f"item {i}", "created_ts": 1_700_000_000_000})
        producer.flush()
    root = tmp_path / "precise"
    config = write_config(tmp_path / "ingest.yaml", kafka_config, root, ingest={"build_sequences": True},
                          sequences={"max_len": 20, "buckets": 2})
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    result = subprocess.run([ray, "job", "submit", "--working-dir", str(REPO), "--",
                             "python", "jobs/ingest.py", "--config", str(config), "--once"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(line for line in reversed(result.stdout.splitlines()) if line.startswith("{")))
    assert summary["events"] == 300 and summary["items"] == 5
    assert read_events(root).num_rows == 300
    assert read_items(root).num_rows == 5
    sequences = read_sequences(root, "all")
    assert sequences.num_rows == 10 and set(sequences.column("length").to_pylist()) == {20}
