"""Shared fixtures: a real Kafka broker and a real local Ray head, started and stopped by the suite.

Both run on free ports with state in a temporary folder, so the suite never touches the local
stack a developer may have running. Each test gets its own topic names. The machine has 2 shared
cores: torch is kept to them explicitly.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from precise.config import KafkaConfig
from precise.stack import KafkaBroker, RayHead
from precise.stack.process import free_port
from precise.stack.ray_head import LOOPBACK_ENV

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray reads this when it is imported, which may happen in a test before `ray_head` runs: set it
# (single-node, loopback: what every test cluster is) before anything imports ray.
os.environ.setdefault(LOOPBACK_ENV, "0")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port(),
                         heap="384m")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_config(kafka_broker: KafkaBroker) -> KafkaConfig:
    """Kafka settings with topic names unique to this test."""
    tag = uuid.uuid4().hex[:8]
    return KafkaConfig(bootstrap_servers=kafka_broker.bootstrap, events_topic=f"events-{tag}",
                       items_topic=f"items-{tag}", dead_letter_topic=f"events-{tag}.dlq", partitions=3)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A token-authenticated Ray head; the test process's env points ray.init at it."""
    state: Path = tmp_path_factory.mktemp("ray")
    gcs = free_port()
    head = RayHead(state, gcs_port=gcs, dashboard_port=free_port(), client_port=free_port(),
                   agent_port=free_port(), metrics_port=free_port(), num_cpus=2,
                   temp_dir=Path(f"/tmp/pr-test-{gcs}"))
    head.start()
    saved = {k: os.environ.get(k) for k in head.client_env()}
    os.environ.update(head.client_env())
    if "ray" in sys.modules:
        # Ray caches its config (token auth mode included) from the environment when imported; a
        # test that imported ray before this fixture ran would otherwise connect without the token.
        from ray._raylet import Config

        Config.initialize("")
    yield head
    import ray

    if ray.is_initialized():
        ray.shutdown()
    head.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def random_token_table(
    num_items: int, m: int = 6, dim: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in for precise.text output already projected: [n + 1, m, dim] states and a mask
    with 1..m valid tokens per item (row 0 = padding: one zero token)."""
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((num_items + 1, m, dim)).astype(np.float32)
    lengths = rng.integers(1, m + 1, num_items + 1)
    mask = np.arange(m)[None, :] < lengths[:, None]
    states[~mask] = 0.0
    states[0] = 0.0
    mask[0] = False
    mask[0, 0] = True
    return states, mask


@pytest.fixture
def token_table_small() -> tuple[np.ndarray, np.ndarray]:
    return random_token_table(30)


@pytest.fixture(scope="session")
def ml100k_lake(kafka_broker, ray_head, tmp_path_factory) -> Path:
    """MovieLens-100k replayed into the session broker and ingested once (lake + sequences `all` and
    `like`, max_len 50). Tests train in a copy of it (`lake_copy`), each with a registry of its own."""
    from precise.config import PreciseConfig
    from precise.data import load_movielens
    from precise.events.replay import replay
    from precise.ingest.job import IngestJob

    tag = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("ml100k-lake")
    config = PreciseConfig.model_validate({
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap, "events_topic": f"ev-{tag}",
                  "items_topic": f"it-{tag}", "dead_letter_topic": f"ev-{tag}.dlq", "partitions": 2},
        "storage": {"root": str(root)},
        "ingest": {"publish_dead_letters": False},
        "sequences": ML100K_SEQUENCES,
    })
    replay(load_movielens("ml-100k"), config.kafka, progress=False)
    summary = IngestJob(config).run_once()
    assert summary["events"] == 155_375 and summary["dead_letters"] == 0, summary
    return root


ML100K_SEQUENCES = {"max_len": 50, "buckets": 2, "targets": [{"name": "like", "actions": ["like"]}]}


@pytest.fixture(scope="session")
def ml100k_copy(ml100k_lake: Path):
    """`copy(root, **sections)`: a config on a copy of the ML-100k lake (events, items, sequences; no
    models) at `root`, with the given config sections."""
    import shutil

    from precise.config import PreciseConfig

    def copy(root: Path, **sections: object) -> PreciseConfig:
        for part in ("lake", "sequences"):
            shutil.copytree(ml100k_lake / part, root / part)
        return PreciseConfig.model_validate({"storage": {"root": str(root)}, "sequences": ML100K_SEQUENCES,
                                             **sections})

    return copy
