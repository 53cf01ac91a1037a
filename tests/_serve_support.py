"""What the Serve test modules share: topics of their own, an API token file, deploying serve/app.py."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import yaml

from precise.config import KafkaConfig
from precise.events.topics import ensure_topics
from precise.stack.process import free_port


def make_topics(bootstrap: str, prefix: str, partitions: int) -> KafkaConfig:
    """Kafka settings with topics unique to the calling module, created."""
    tag = f"{prefix}-{free_port()}"
    kafka = KafkaConfig(bootstrap_servers=bootstrap, events_topic=f"{tag}-ev", items_topic=f"{tag}-it",
                        dead_letter_topic=f"{tag}-ev.dlq", partitions=partitions)
    ensure_topics(kafka)
    return kafka


def write_token(root: Path) -> tuple[str, Path]:
    """A random API token in a file readable by its owner only, as a mounted Secret would be."""
    token = secrets.token_urlsafe(32)
    path = root / "serve-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, path


def deploy(config: dict[str, Any], root: Path, name: str, host: str = "127.0.0.1") -> tuple[Path, int]:
    """Write `config` as the platform config and run serve/app.py with it on a fresh Serve
    instance listening on `host`; (config path, port)."""
    import ray
    from ray import serve

    from serve.app import app

    config_path = root / "platform.yaml"
    config_path.write_text(yaml.safe_dump(config))
    if not ray.is_initialized():
        ray.init()
    port = free_port()
    serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": False})
    serve.run(app({"config": str(config_path)}), name=name, route_prefix="/")
    return config_path, port
