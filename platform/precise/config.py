"""Platform configuration: one YAML file per dataset / experiment, validated on load.

Unknown keys are errors (a typo must not silently fall back to a default). `${VAR}` and
`${VAR:-default}` in string values are expanded from the environment, so one file serves the
local stack and a cluster (e.g. `root: ${PRECISE_ROOT:-s3://bucket/precise}`).
Sections owned by a stage (ingest, model, train, serve) live beside that stage and are added here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from precise.events.schema import DEFAULT_ACTIONS
from precise.paths import precise_home


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaConfig(Section):
    """How clients reach Kafka, and the topics of the contracts (DESIGN section 4)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "behavior-events"
    items_topic: str = "item-catalog"
    dead_letter_topic: str = "behavior-events.dlq"
    partitions: int = Field(4, ge=1, le=1024)
    # Passed through to every client (kafka-python names), e.g. security_protocol, sasl_mechanism,
    # sasl_plain_username, ssl_cafile: how to point the platform at an existing secured cluster.
    client_options: dict[str, Any] = Field(default_factory=dict)
    allowed_actions: list[str] = Field(default_factory=lambda: list(DEFAULT_ACTIONS))


class LocalKafkaConfig(Section):
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"


class LocalRayConfig(Section):
    gcs_port: int = 6379
    dashboard_port: int = 8265
    client_port: int = 10001
    agent_port: int = 52365
    metrics_port: int = 8090
    num_cpus: int = Field(2, ge=1)


class StackConfig(Section):
    """The embedded local stack (`precise stack up`): one Kafka broker and one Ray head."""

    state_dir: str | None = None  # default: <PRECISE_HOME>/stack
    kafka: LocalKafkaConfig = Field(default_factory=LocalKafkaConfig)
    ray: LocalRayConfig = Field(default_factory=LocalRayConfig)

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else precise_home() / "stack"


class ReplayConfig(Section):
    """What `jobs/replay.py` streams into Kafka."""

    dataset: str = "ml-100k"  # ml-100k | ml-1m | synthetic
    speed: float | None = Field(None, gt=0)  # event-time seconds per wall second; None = max
    synthetic: dict[str, Any] = Field(default_factory=dict)  # SyntheticConfig fields


class StorageConfig(Section):
    """Root of the lake, registry and snapshots: a local path or a pyarrow/fsspec URI."""

    root: str | None = None  # default: PRECISE_HOME

    def resolved_root(self) -> str:
        return self.root or str(precise_home())


class IngestConfig(Section):
    """The ingest job (`jobs/ingest.py`): Kafka -> validated event lake, in micro-batches."""

    interval_s: float = Field(5.0, gt=0)  # continuous mode: wait between polls once caught up
    # Upper bound on records read per events partition in one micro-batch: bounds memory and the
    # work lost to a crash. The (compacted) item topic is read to its end every batch.
    max_records_per_partition: int = Field(200_000, ge=1)
    # Per read task. Ray's reader then returns what it has (a partial range, only a warning);
    # the ledger advances by the offsets actually seen, so nothing is skipped.
    read_timeout_s: float = Field(60.0, gt=0)
    kafka_timeout_s: float = Field(10.0, gt=0)  # metadata / watermark queries
    read_num_cpus: float = Field(1.0, gt=0)  # per Ray read+validate task (CPU-bound: one core each)
    max_payload_bytes: int = Field(64 * 1024, ge=64)  # larger records are dead-lettered
    publish_dead_letters: bool = True  # also send rejects to kafka.dead_letter_topic (at least once)
    retry_backoff_s: float = Field(2.0, gt=0)  # after a failed batch, doubled up to retry_backoff_max_s
    retry_backoff_max_s: float = Field(30.0, gt=0)
    once_max_failures: int = Field(5, ge=1)  # --once gives up after this many failed attempts in a row
    build_sequences: bool = True  # rebuild the touched users' sequences after committed batches
    sequence_min_interval_s: float = Field(0.0, ge=0)  # continuous mode: at most one build per interval
    # Passed to the Confluent consumer of `ray.data.read_kafka` and the offset queries (librdkafka
    # names), on top of what kafka.client_options maps to.
    consumer_config: dict[str, Any] = Field(default_factory=dict)


class SequenceSpec(Section):
    """One family of per-user sequences: the events kept (actions and/or scenes)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # output folder: <root>/sequences/<name>/
    actions: list[str] | None = None  # None: every action
    scenes: list[str] | None = None  # None: every scene


class SequenceConfig(Section):
    """What the sequence builder writes for training: the all-scene sequence S_u and targets S'_u."""

    max_len: int = Field(200, ge=3)  # keep the most recent events
    buckets: int = Field(8, ge=1, le=4096)  # output files per sequence (users hashed into them)
    # MovieLens `like` events repeat `rate` ones, so the all-scene sequence keeps `rate` only.
    all_scene: SequenceSpec = Field(default_factory=lambda: SequenceSpec(name="all", actions=["rate"]))
    targets: list[SequenceSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> SequenceConfig:
        names = [s.name for s in self.specs()]
        if len(set(names)) != len(names):
            raise ValueError(f"sequence names must be unique (they name output folders), got {names}")
        return self

    def specs(self) -> list[SequenceSpec]:
        return [self.all_scene, *self.targets]


class PreciseConfig(Section):
    name: str = "default"
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sequences: SequenceConfig = Field(default_factory=SequenceConfig)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (referenced as ${{{name}}})")
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def load_config(path: str | Path | None = None, model: type[BaseModel] = PreciseConfig) -> Any:
    """Read and validate a YAML config (defaults only when `path` is None)."""
    if path is None:
        return model()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return model.model_validate(_expand(raw))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
