"""Platform configuration: one YAML file per dataset / experiment, validated on load.

Unknown keys are errors (a typo must not silently fall back to a default). `${VAR}` and
`${VAR:-default}` in string values are expanded from the environment, so one file serves the
local stack and a cluster (e.g. `root: ${PRECISE_ROOT:-s3://bucket/precise}`).
Sections owned by a stage (ingest, model, train, serve) live beside that stage and are added here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from precise.events.schema import DEFAULT_ACTIONS
from precise.model.config import TARGETED_VARIANTS, UNIVERSAL_VARIANTS, ModelConfig
from precise.paths import precise_home


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaConfig(Section):
    """How clients reach Kafka, and the topics of the contracts (DESIGN section 4)."""

    bootstrap_servers: str = "127.0.0.1:9092"  # brokers, comma-separated host:port
    events_topic: str = "behavior-events"  # behaviour events, key = user id
    items_topic: str = "item-catalog"  # item catalogue, key = item id, compacted
    dead_letter_topic: str = "behavior-events.dlq"  # rejected records, with the reason
    partitions: int = Field(4, ge=1, le=1024)  # of the events and items topics when the platform creates them
    # copies of every partition of the topics the platform creates; None: the broker's
    # default.replication.factor (a real cluster's 3 with min.insync.replicas=2 and the producer's
    # acks=all: a broker may die, nothing is lost; a one-broker test stack's 1)
    replication_factor: int | None = Field(None, ge=1, le=32)
    # Passed through to every client (kafka-python names), e.g. security_protocol, sasl_mechanism,
    # sasl_plain_username, ssl_cafile: how to point the platform at an existing secured cluster.
    client_options: dict[str, Any] = Field(default_factory=dict)
    allowed_actions: list[str] = Field(default_factory=lambda: list(DEFAULT_ACTIONS))  # other actions are rejected


class LocalKafkaConfig(Section):
    port: int = 9092  # broker listener on 127.0.0.1
    controller_port: int = 9093  # KRaft controller listener
    heap: str = "512m"  # broker JVM heap (-Xmx / -Xms)
    # Also a SASL_PLAINTEXT listener (mechanism PLAIN) on this port, with these users (name: password),
    # to try kafka.client_options security settings against a broker that authenticates. None: off.
    sasl_port: int | None = Field(None, ge=1, le=65535)
    sasl_users: dict[str, str] = Field(default_factory=dict)  # the SASL listener's PLAIN users: name -> password

    @model_validator(mode="after")
    def _sasl_needs_users(self) -> LocalKafkaConfig:
        if self.sasl_port is not None and not self.sasl_users:
            raise ValueError("stack.kafka.sasl_port needs at least one user in stack.kafka.sasl_users")
        return self


class LocalRayConfig(Section):
    gcs_port: int = 6379  # the head's GCS address (RAY_ADDRESS)
    dashboard_port: int = 8265  # dashboard and job submission API
    client_port: int = 10001  # Ray Client server (ray://)
    agent_port: int = 52365  # dashboard agent
    metrics_port: int = 8090  # Prometheus metrics (http://127.0.0.1:<port>/metrics)
    num_cpus: int = Field(2, ge=1)  # logical CPUs the head offers to tasks and actors
    # Serve's HTTP ingress: haproxy (Ray's HAProxy straight to the replicas) | proxy (Serve's Python proxy)
    serve_ingress: Literal["haproxy", "proxy"] = "haproxy"


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


class TextModelConfig(Section):
    """The LLM whose token states initialise the item token table (precise.text)."""

    # smollm2 (the default LLM of the paper setup) | minilm (fast) | hashed (tests) | your own: a local
    # model folder (./path, transformers save_pretrained) or a Hugging Face id (org/name) already in the
    # local Hugging Face cache; nothing is downloaded (docs/bring-your-own.md)
    model: str = Field("minilm", min_length=1)
    max_tokens: int = Field(32, ge=1)  # m: tokens per item
    # Item text not in the token cache is encoded by a Ray Data actor pool when Ray is up (training
    # jobs), not by the driver: the pool's size
    encode_actors: int = Field(1, ge=1)
    encode_batch_size: int = Field(32, ge=1)  # texts per model call in an encoding actor
    encode_num_cpus: float = Field(1.0, gt=0)  # logical CPUs per encoding actor (and its torch threads)
    encode_num_gpus: float | None = Field(None, ge=0)  # null: 1 per actor when the cluster has a GPU, else 0


def _options_of(cls: type, exclude: tuple[str, ...]) -> type[Section]:
    """A config section with the fields, types and defaults of the dataclass `cls` (less `exclude`),
    so the YAML is typed and validated at load, with one definition of each field (the dataclass)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls) if f.name not in exclude}
    section = create_model(f"{cls.__name__}Options", __base__=Section, **fields)
    section.__doc__ = f"The fields of `{cls.__module__}.{cls.__name__}` (documented there)."
    section.dataclass_source = cls  # scripts/gen_config_docs.py documents the dataclass's fields
    return section


class ModelOptions(_options_of(ModelConfig, exclude=("num_items",))):
    """`training.model`: every `precise.model.ModelConfig` field but the catalogue size, which comes
    from the data."""

    @model_validator(mode="after")
    def _valid_model(self) -> ModelOptions:
        ModelConfig(num_items=1, **self.model_dump())  # its own checks (fusion, heads, top_k), at load
        return self


class TrainOptions(Section):
    """One training stage (`training.universal` or `training.targeted`): optimiser, epochs, selection."""

    epochs: int = Field(10, ge=0)  # passes over the training samples
    batch_size: int = Field(128, ge=1)  # samples per optimizer step (per Ray Train worker)
    lr: float = Field(1e-3, ge=0)  # AdamW learning rate of parameters that start fresh (e.g. the targeted head)
    # learning rate of the parameters taken from a parent model (the warm start of targeted training,
    # the previous version of incremental training); null: `lr`
    warm_start_lr: float | None = Field(None, ge=0)
    # learning rate of the item tower (ID table, token table, MoE) wherever it comes from; 0 freezes
    # it; null: the rate of its group above
    item_lr: float | None = Field(None, ge=0)
    weight_decay: float = Field(0.0, ge=0)  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eval_every: int = Field(1, ge=1)  # validate every n epochs (and after the last one)
    freeze_tokens_epochs: int = Field(0, ge=0)  # alternate training: token table frozen for these first epochs
    patience: int | None = Field(None, ge=1)  # stop after this many validations without improvement
    amp: Literal["bf16"] | None = None  # "bf16": autocast matmuls to bfloat16 (CUDA)
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm (clip_grad_norm_); null: no clipping
    # validate, select and register an exponential moving average of the weights (updated after every
    # step with this decay) instead of the last step's; null: the weights as trained. A resumed run
    # restarts the average from the checkpoint's weights
    ema_decay: float | None = Field(None, gt=0, lt=1)
    seed: int = 42  # seeds the initial weights, the sample order and the negatives of every epoch
    # training samples per user: `last` = one window of its most recent max_len + 1 training items;
    # `all` = windows covering its whole training history (each transition once)
    windows: Literal["last", "all"] = "last"
    # `windows: all`: a window ends every this many items (null: every max_len items, so each
    # transition is in one window). Smaller strides overlap the windows: each next item is also
    # predicted from a longer history (RecBole's SASRec trains every prefix: stride 1), at
    # max_len / stride times the samples per epoch
    window_stride: int | None = Field(None, ge=1)


class TargetedOptions(TrainOptions):
    """`training.targeted`: a training stage, plus what the targeted task trains on."""

    # the user's history the model reads: `target` = the target family's own events (paper: S'_u);
    # `all` = the all-scene sequence, with the target events as the labels to predict
    history: Literal["target", "all"] = "target"
    targets_per_user: int = Field(1, ge=1)  # predicted target events per training window and epoch


class TrainingConfig(Section):
    """Universal and targeted training (`jobs/universal.py`, `jobs/targeted.py`, the pipeline and
    `benchmarks/quality.py`: one recipe, precise.train.recipe)."""

    model: ModelOptions = Field(default_factory=ModelOptions)  # the model (precise.model.ModelConfig)
    universal: TrainOptions = Field(default_factory=TrainOptions)  # universal training
    targeted: TargetedOptions = Field(default_factory=TargetedOptions)  # targeted training
    target: str = "like"  # the sequence family (sequences.targets[].name) of the targeted task
    text: TextModelConfig = Field(default_factory=TextModelConfig)
    # the validation metric that chooses the registered epoch: R@K or N@K (K in eval_ks)
    select_metric: str = Field("N@10", pattern=r"^[RN]@[0-9]+$")
    eval_ks: list[int] = Field(default_factory=lambda: [10], min_length=1)  # K of the validation metrics
    eval_batch_users: int = Field(1024, ge=1)  # users scored at once in validation (memory: users x items)
    num_workers: int = Field(1, ge=1)  # Ray Train workers (DDP over gloo on CPU, nccl on GPU)
    cpus_per_worker: float = Field(1.0, gt=0)  # logical CPUs reserved per Ray Train worker
    use_gpu: bool = False  # one GPU per Ray Train worker
    # torch intra-op and inter-op threads (and OMP/MKL_NUM_THREADS) in each worker: with N workers on
    # a node, N x threads_per_worker should not exceed its cores (docs/performance.md)
    threads_per_worker: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)  # worker-group restarts from the last checkpoint
    # Ray Train's preemption watcher: one more actor per run, polling for node drains, so that on a
    # drained node (spot nodes on KubeRay) the other workers may finish a checkpoint before the
    # restart. Off, a drained node's workers just fail and the group restarts from the last
    # checkpoint (max_failures). Off by default: one node has no other node to go on with, and with
    # it 2 DDP workers on 2 cores ran 1.53x the plain loop instead of 1.75x (docs/performance.md).
    preemption_watcher: bool = False

    @model_validator(mode="after")
    def _select_metric_is_measured(self) -> TrainingConfig:
        k = int(self.select_metric.split("@")[1])
        if k not in self.eval_ks:
            raise ValueError(f"select_metric {self.select_metric} needs K={k} in eval_ks {self.eval_ks}")
        return self


EVENT_FIELDS = ("event_id", "user_id", "item_id", "scene", "action", "ts", "value")  # the event contract
_DERIVED_EVENT_ID = "event_id"  # the one contract field a mapping may leave out (it is derived)


class FieldMapping(Section):
    """`ingest.field_mapping`: how records of your own topic or history schema become the event
    contract (precise.events.mapping), applied before the contract's checks. Every contract field but
    `event_id` and `value` comes from `fields` or `constants`; without an `event_id` one is derived
    from the mapped content (the same event always gets the same id, so re-sent copies are dropped)."""

    # contract field -> where it is in your record: a top-level name or a dotted path into nested
    # objects (e.g. user_id: user.id)
    fields: dict[str, str] = Field(default_factory=dict)
    constants: dict[str, str | int | float] = Field(default_factory=dict)  # contract field -> fixed value
    # contract field -> {your value: contract value} (e.g. action: {thumbs_up: like}); other values pass
    values: dict[str, dict[str, str | int | float]] = Field(default_factory=dict)
    timestamp: Literal["ms", "s", "iso"] = "ms"  # your ts: epoch ms, epoch s, or ISO 8601 (naive = UTC)
    ids_as_strings: bool = True  # integer ids (user_id: 42) become strings ("42"); false: rejected
    keep_unmapped: bool = True  # your record's other top-level fields are kept as the event's extra fields

    @model_validator(mode="before")
    @classmethod
    def _string_value_keys(cls, data: Any) -> Any:
        # YAML reads `1: click` with an int key; match it to the record's value as text
        if isinstance(data, dict) and isinstance(data.get("values"), dict):
            data = {**data, "values": {f: {str(k): v for k, v in (m or {}).items()} if isinstance(m, dict) else m
                                       for f, m in data["values"].items()}}
        return data

    @model_validator(mode="after")
    def _covers_the_contract(self) -> FieldMapping:
        for part in ("fields", "constants", "values"):
            unknown = sorted(set(getattr(self, part)) - set(EVENT_FIELDS))
            if unknown:
                raise ValueError(f"{part}: {unknown} are not event contract fields {list(EVENT_FIELDS)}")
        both = sorted(set(self.fields) & set(self.constants))
        if both:
            raise ValueError(f"{both} are both in fields and in constants; give each field one source")
        missing = [f for f in EVENT_FIELDS if f not in self.fields and f not in self.constants
                   and f not in (_DERIVED_EVENT_ID, "value")]
        if missing:
            raise ValueError(f"the mapping gives no source for the contract fields {missing}: add them to "
                             f"fields (your field's name or dotted path) or to constants (a fixed value)")
        if "ts" in self.constants:
            raise ValueError("ts (the event time) cannot be a constant; map it from your record in fields")
        return self


ITEM_FIELDS = ("item_id", "text", "scene", "created_ts")  # the item contract


class ItemFieldMapping(Section):
    """`ingest.item_field_mapping`: how records of your catalogue schema become the item contract, for
    the items topic and `jobs/import_history.py --items`. `text` comes from `fields` or from
    `text_template` (e.g. "{title} ({year}). Genres: {genres}", names or dotted paths of your record);
    without `created_ts` an item gets the time it was read."""

    fields: dict[str, str] = Field(default_factory=dict)  # contract field -> your field's name or dotted path
    constants: dict[str, str | int] = Field(default_factory=dict)  # contract field -> fixed value
    text_template: str | None = None  # the item text built from several of your fields
    timestamp: Literal["ms", "s", "iso"] = "ms"  # your created_ts: epoch ms, epoch s, or ISO 8601
    ids_as_strings: bool = True  # an integer item_id becomes a string
    keep_unmapped: bool = False  # your record's other top-level fields are kept as the item's extra fields

    @model_validator(mode="after")
    def _covers_the_contract(self) -> ItemFieldMapping:
        for part in ("fields", "constants"):
            unknown = sorted(set(getattr(self, part)) - set(ITEM_FIELDS))
            if unknown:
                raise ValueError(f"{part}: {unknown} are not item contract fields {list(ITEM_FIELDS)}")
        if "item_id" not in self.fields:
            raise ValueError("fields.item_id is required: where your record holds the item's id")
        sources = ("text" in self.fields) + ("text" in self.constants) + (self.text_template is not None)
        if sources != 1:
            raise ValueError("give the item text exactly one source: fields.text, constants.text or text_template")
        return self


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
    # Clock-skew allowance of event-time validation: an event whose `ts` is further ahead than this
    # of the later of the worker's clock and the record's Kafka timestamp is dead-lettered.
    max_event_time_ahead_s: float = Field(86_400.0, ge=0)
    publish_dead_letters: bool = True  # also send rejects to kafka.dead_letter_topic (at least once)
    # The topic copy is a courtesy, the lake's dead-letter files the record of truth: key and value
    # are cut to this many bytes in the topic message (with their full size and a pointer to the
    # lake row), so no reject can be too big for the topic. Publish failures are counted, not fatal.
    dead_letter_max_bytes: int = Field(16 * 1024, ge=0, le=512 * 1024)
    # The lake's writer lease (precise.store.lease), the one-writer fence that holds on object stores
    # and shared volumes too: a job refuses a lake whose lease another job renewed this recently.
    writer_lease_s: float = Field(30.0, gt=0)
    retry_backoff_s: float = Field(2.0, gt=0)  # after a failed batch, doubled up to retry_backoff_max_s
    retry_backoff_max_s: float = Field(30.0, gt=0)  # the longest wait between retries
    once_max_failures: int = Field(5, ge=1)  # --once gives up after this many failed attempts in a row
    build_sequences: bool = True  # rebuild the touched users' sequences after committed batches
    sequence_min_interval_s: float = Field(0.0, ge=0)  # continuous mode: at most one build per interval
    # Lake compaction (precise.ingest.compact): merge a partition's files in one date folder once it
    # has this many that every sequence build has read; 0 turns it off.
    compact_min_files: int = Field(32, ge=0)
    compact_interval_s: float = Field(300.0, gt=0)  # continuous mode: at most one compaction pass per interval
    # Merged-away files stay (ignored by readers) this long, so a reader that listed them can finish
    compact_grace_s: float = Field(600.0, ge=0)
    # Passed to the Confluent consumer of the partition reads and the offset queries (librdkafka
    # names), on top of what kafka.client_options maps to.
    consumer_config: dict[str, Any] = Field(default_factory=dict)
    # Your schema -> the event contract, for the events topic and jobs/import_history.py; null:
    # records are the contract as they are (docs/bring-your-own.md)
    field_mapping: FieldMapping | None = None
    item_field_mapping: ItemFieldMapping | None = None  # the same for the items topic / imported catalogues


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
    targets: list[SequenceSpec] = Field(default_factory=list)  # target-scene / target-behaviour sequences S'_u

    @model_validator(mode="after")
    def _unique_names(self) -> SequenceConfig:
        names = [s.name for s in self.specs()]
        if len(set(names)) != len(names):
            raise ValueError(f"sequence names must be unique (they name output folders), got {names}")
        return self

    def specs(self) -> list[SequenceSpec]:
        return [self.all_scene, *self.targets]


class PipelineConfig(Section):
    """The orchestrator (`jobs/pipeline.py`): one cycle per `cycle_s` of event time."""

    cycle_s: float = Field(86_400.0, gt=0)  # event-time length of a cycle ("a day")
    warmup_cycles: int = Field(1, ge=1)  # periods of history before the first trained boundary
    max_cycles: int | None = Field(None, ge=1)  # stop after this many trained cycles
    mode: Literal["periodic", "once"] = "periodic"  # TT re-warm-started every cycle, or only once
    predict: bool = True  # publish an embedding snapshot after each cycle (when serving is set up)
    # which model a cycle publishes for the target task: auto = the better of the new targeted and the
    # new universal model (used directly) on the target task's validation (the serving gate)
    publish: Literal["auto", "targeted", "universal"] = "auto"
    poll_interval_s: float = Field(10.0, gt=0)  # --follow: wait between ingest polls
    # item cycles between full cycles, every this much event time (0: none): the catalogue's new and
    # changed items are embedded with the served snapshot's model and published as an item delta
    # (deleted items leave), so new items are searchable within this period, not the next full cycle
    item_cycle_s: float = Field(3_600.0, ge=0)


class EmbedderConfig(Section):
    """Which `Embedder` (precise.predict.embedder) turns ids, texts and sequences into vectors.

    `import_path` is `module:Class`; the class is built as `Class(**kwargs)` once per worker.
    The default reads precomputed vectors from Parquet, so the pipeline runs without a trained model.
    """

    import_path: str = "precise.predict.embedders:TableEmbedder"  # module:Class of the embedder
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the embedder class


class IndexConfig(Section):
    """How the item index is built: exact search while the catalogue is small, then approximate."""

    exact_max_items: int = Field(200_000, ge=1)  # flat inner product up to this many items
    approximate: Literal["hnsw", "ivf"] = "hnsw"  # index type past exact_max_items
    hnsw_m: int = Field(32, ge=4, le=256)  # HNSW graph neighbours per node (FAISS M)
    hnsw_ef_construction: int = Field(200, ge=8)  # HNSW build-time search width
    hnsw_ef_search: int = Field(128, ge=8)  # HNSW query-time search width (recall vs latency)
    ivf_nlist: int | None = Field(None, ge=1)  # default: about 4 * sqrt(items)
    ivf_nprobe: int = Field(32, ge=1)  # IVF lists scanned per query
    recall_k: int = Field(10, ge=1, le=1000)  # recall@k of the index against exact search ...
    recall_queries: int = Field(500, ge=1)  # ... measured on this many sampled queries


class PredictConfig(Section):
    """Batch prediction (`jobs/predict.py`): catalogue + sequences -> an embedding snapshot."""

    task: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")  # snapshot series: <root>/embeddings/<task>/
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    # Items: the lake's item table (every item of `item-catalog` that is not deleted, with its text: a
    # new item known only by its text is embedded from it, the cold-start path) or a Parquet file.
    items_from: Literal["lake", "parquet"] = "lake"
    items_path: str | None = None  # Parquet with item_id, text (items_from: parquet)
    # Users: their sequences in the lake, with the sequence rules of the model (a targeted model reads
    # its target family), or a Parquet file of (user_id, item_ids).
    users_from: Literal["lake", "parquet"] = "lake"
    sequences_path: str | None = None  # Parquet with user_id, item_ids (users_from: parquet)
    # for an embedder that records no sequence rules (the trained model does): the family and window
    sequence_family: str | None = None  # null: sequences.all_scene
    max_sequence_length: int = Field(50, ge=1, le=10_000)  # most recent items per user sequence
    batch_size: int = Field(512, ge=1)  # rows per embedding batch (Ray Data map_batches)
    num_actors: int = Field(1, ge=1)  # embedding actors (Ray Data actor pool size)
    actor_num_cpus: float = Field(1.0, gt=0)  # per embedding actor
    threads_per_actor: int = Field(1, ge=1)  # torch / BLAS threads in each embedding actor
    keep_versions: int = Field(5, ge=2)  # older snapshots are deleted after a publish


class DeploymentScaling(Section):
    """Replica count and size of one Serve deployment (autoscaled between min and max)."""

    min_replicas: int = Field(1, ge=1)  # autoscaling lower bound
    max_replicas: int = Field(2, ge=1)  # autoscaling upper bound
    target_ongoing_requests: float = Field(8, gt=0)  # autoscaler target of in-flight requests per replica
    max_ongoing_requests: int = Field(64, ge=1)  # per replica; more requests queue in the proxy
    # per deployment and proxy: requests beyond it get 503 at once (with Retry-After) instead of
    # waiting in an unbounded queue while the replicas are full
    max_queued_requests: int = Field(128, ge=1)
    num_cpus: float = Field(0.25, ge=0)  # logical CPUs reserved per replica
    threads: int = Field(1, ge=1)  # torch / FAISS / OpenMP threads per replica


class ServeAuthConfig(Section):
    """Bearer-token authentication of the recall service's HTTP API (every route but /healthz)."""

    # auto: on whenever Serve's HTTP proxy listens beyond loopback (http_options.host other than
    # 127.0.0.1 / ::1 / localhost, or unknown); on: always; off: never (only behind something
    # that authenticates for it)
    mode: Literal["auto", "on", "off"] = "auto"
    # a file holding the token, read once when a replica starts (a mounted Secret); if unset,
    # the environment variable `token_env` of the replica's process holds the token
    token_file: str | None = None
    token_env: str = Field("PRECISE_SERVE_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the variable with the token


class ServeConfig(Section):
    """The Ray Serve recall service (`serve/app.py`)."""

    task: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")  # which snapshot series to serve
    # single: HTTP straight into the Recall replicas (one hop); split: a separate Ingress
    # deployment forwards to Recall through a handle (HTTP work scales apart from the index).
    topology: Literal["single", "split"] = "single"
    poll_interval_s: float = Field(10.0, gt=0)  # how often LATEST is checked
    auth: ServeAuthConfig = Field(default_factory=ServeAuthConfig)
    # larger request bodies get 413, counted as they arrive (chunked bodies declare no length)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0)  # the whole body must arrive within this, else 408
    request_timeout_s: float = Field(30.0, gt=0)  # an answer within this once the body is in, else 504
    # cold-text embeddings ({text} of an item the snapshot lacks: runs the model's text encoder,
    # the LLM) per replica: a token bucket of this rate and burst; over it, 429 with Retry-After
    cold_text_rate_per_s: float = Field(2.0, gt=0)
    cold_text_burst: int = Field(4, ge=1)  # cold-text requests a replica takes at once before the rate applies
    u2i2i_seeds: int = Field(10, ge=1)  # most recent items whose neighbours U2I2I merges
    batch_max_size: int = Field(32, ge=1)  # @serve.batch of FAISS searches
    batch_wait_s: float = Field(0.0, ge=0)  # 0: batch what is queued, never wait for more
    access_log: bool = False  # Serve's per-request access log lines
    # Recent items per user from the live behaviour stream (U2I2I, exclude_seen, cold users).
    recent_enabled: bool = True
    recent_items: int = Field(50, ge=1)  # last N items per user
    recent_max_users: int = Field(1_000_000, ge=1)  # LRU bound
    # memory of the recent items per replica (least recently active users evicted first); about
    # 1.2 KB per user with 50 items: 1 GiB holds ~850,000 such users
    recent_max_bytes: int = Field(1 << 30, ge=1 << 16)
    recent_actions: list[str] | None = None  # only these actions count (None: all)
    recent_backfill_per_partition: int = Field(100_000, ge=0)  # records re-read at start-up
    # U2I / user embeddings for a user in the snapshot: snapshot = the stored (daily) vector;
    # realtime = the snapshot's sequence tail of the user plus their live events since, embedded
    # with the snapshot's model, cached until the user's next event
    user_vector_mode: Literal["snapshot", "realtime"] = "snapshot"
    realtime_cache_users: int = Field(100_000, ge=1)  # real-time vectors kept per replica (LRU)
    # realtime: recompute a user's vector in the background when their event arrives (not at their
    # next request); at most this many users wait for it, the oldest dropped (0: off, compute lazily)
    realtime_refresh_queue: int = Field(10_000, ge=0)
    # Embedders are imported by the path a snapshot's manifest names: only from these packages.
    embedder_allowed_prefixes: list[str] = Field(default_factory=lambda: ["precise."])
    ingress: DeploymentScaling = Field(default_factory=lambda: DeploymentScaling(max_ongoing_requests=256))
    recall: DeploymentScaling = Field(default_factory=DeploymentScaling)


class QualityConfig(Section):
    """`benchmarks/quality.py`: which variants to train and evaluate on which packaged dataset, and how
    to score them (paper section V). Training itself is `training` with the variant's fusion."""

    dataset: Literal["ml-100k", "ml-1m"] = "ml-100k"  # replayed into a lake of its own, once
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)  # one run per seed; results are means
    # universal variants (all-scene task): id_only, llm_only, pool, ut; targeted (target task): tt, ut_tt
    variants: list[str] = Field(default_factory=lambda: ["id_only", "ut", "tt", "ut_tt"], min_length=1)
    ks: list[int] = Field(default_factory=lambda: [10, 30, 50], min_length=1)  # Recall@K and NDCG@K
    hot_fraction: float = Field(0.2, gt=0, lt=1)  # cold items: outside this most popular share
    # another quality config (its file stem) whose per-seed `ut` models this config's ut_tt warm-starts
    # from and ut_target uses, instead of training ut again: one universal model, several targeted
    # tasks, as in the paper. Its sequences, model, universal and text settings must equal this
    # config's (checked). null: train ut here
    universal_from: str | None = None

    @model_validator(mode="after")
    def _known_variants(self) -> QualityConfig:
        unknown = [v for v in self.variants if v not in UNIVERSAL_VARIANTS and v not in TARGETED_VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {[*UNIVERSAL_VARIANTS, *TARGETED_VARIANTS]}")
        return self


class PreciseConfig(Section):
    name: str = "default"  # a label; recorded with the whole config in each model version's metadata
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sequences: SequenceConfig = Field(default_factory=SequenceConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    quality: QualityConfig | None = None  # only the configs of benchmarks/quality.py have one

    @model_validator(mode="after")
    def _training_target_is_built(self) -> PreciseConfig:
        targets = [spec.name for spec in self.sequences.targets]
        if targets and self.training.target not in targets:
            raise ValueError(f"training.target {self.training.target!r} is not one of sequences.targets {targets}")
        return self


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
