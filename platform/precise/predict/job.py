"""Batch prediction with Ray Data: every catalogue item and every user -> an embedding snapshot.

Items come from the compacted `item-catalog` topic (the newest record per item id: every item,
including new ones known only by their text, which the embedder embeds from text: the cold-start
path) or from a Parquet file. Users come from their sequences: built here from `behavior-events`,
or read from a Parquet file of (user_id, item_ids) written by the sequence builder. Embedding runs
in `map_batches` on an actor pool, each actor loading the embedder once.

An items-only cycle (items hourly, users daily) carries the user vectors of the LATEST snapshot
over when the same model version made them; after a model change it recomputes the users too, so
a snapshot never holds vectors of two model versions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from precise.config import KafkaConfig, PreciseConfig
from precise.metrics import best_effort
from precise.metrics.predict import snapshot_published
from precise.predict.embedder import load_embedder, set_thread_counts
from precise.predict.index import index_builder
from precise.store.snapshots import SnapshotError, SnapshotRef, SnapshotStore
from precise.vectors import normalize, vectors_from_arrow, vectors_to_arrow

log = logging.getLogger(__name__)

Cycle = Literal["all", "items"]


class PredictError(RuntimeError):
    """Batch prediction cannot produce a snapshot; the message says what is missing."""


# ---- embedding actors (one embedder per actor, loaded once) -------------------------------------


class _EmbedActor:
    def __init__(self, import_path: str, kwargs: dict[str, Any], threads: int) -> None:
        set_thread_counts(threads)
        self.embedder = load_embedder(import_path, kwargs)


class ItemEmbedActor(_EmbedActor):
    """(item_id, text) -> (item_id, vector, model_version)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("item_id").to_pylist()
        vectors = self.embedder.embed_items(ids, batch.column("text").to_pylist())
        return pa.table({"item_id": pa.array(ids, pa.string()), "vector": vectors_to_arrow(normalize(vectors)),
                         "model_version": pa.array([self.embedder.model_version] * len(ids), pa.string())})


class UserEmbedActor(_EmbedActor):
    """(user_id, item_ids) -> (user_id, vector, model_version); users with no known item are left out."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        users, vectors = [], []
        for user_id, items in zip(batch.column("user_id").to_pylist(), batch.column("item_ids").to_pylist(),
                                  strict=True):
            try:
                vectors.append(self.embedder.embed_user_sequence(items))
            except KeyError:
                continue  # nothing the model knows yet: U2I2I and live events cover such users
            users.append(user_id)
        dim = vectors[0].shape[0] if vectors else 1
        matrix = normalize(np.stack(vectors)) if vectors else np.zeros((0, dim), np.float32)
        return pa.table({"user_id": pa.array(users, pa.string()), "vector": vectors_to_arrow(matrix),
                         "model_version": pa.array([self.embedder.model_version] * len(users), pa.string())})


# ---- inputs -------------------------------------------------------------------------------------


def _kafka_read(kafka: KafkaConfig, topic: str, num_cpus: float) -> tuple[Any, dict[int, int]]:
    """A bounded Ray Data read of `topic` up to its current end; also the end offsets read to."""
    import ray.data
    from ray.data import KafkaAuthConfig

    from precise.events.topics import end_offsets

    ends = end_offsets(kafka.bootstrap_servers, topic, kafka.client_options)
    if not ends:
        raise PredictError(f"topic {topic!r} does not exist on {kafka.bootstrap_servers}")
    auth = KafkaAuthConfig(**kafka.client_options) if kafka.client_options else None
    ds = ray.data.read_kafka(topic, bootstrap_servers=kafka.bootstrap_servers, start_offset="earliest",
                             end_offset={topic: dict(ends)}, kafka_auth_config=auth, timeout_ms=120_000,
                             num_cpus=num_cpus)
    return ds, ends


def _parse_items(batch: pa.Table) -> pa.Table:
    ids, texts = [], []
    for value in batch.column("value").to_pylist():
        try:
            record = json.loads(value)
            item_id, text = record["item_id"], record["text"]
        except (ValueError, KeyError, TypeError):
            item_id, text = None, None  # the producer validates; tolerate strays by skipping them
        ids.append(item_id if isinstance(item_id, str) else None)
        texts.append(text if isinstance(text, str) else None)
    return pa.table({"item_id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                     "partition": batch.column("partition"), "offset": batch.column("offset")})


def _parse_events(batch: pa.Table) -> pa.Table:
    users, items, ts, actions = [], [], [], []
    for value in batch.column("value").to_pylist():
        try:
            e = json.loads(value)
            u, i, t, a = e["user_id"], e["item_id"], int(e["ts"]), str(e.get("action", ""))
        except (ValueError, KeyError, TypeError):
            continue
        users.append(u)
        items.append(i)
        ts.append(t)
        actions.append(a)
    return pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string()),
                     "ts": pa.array(ts, pa.int64()), "action": pa.array(actions, pa.string())})


def read_catalog(cfg: PreciseConfig) -> tuple[pa.Table, dict[str, Any]]:
    """(item_id, text) of every catalogue item, newest record per id; plus where it came from."""
    p = cfg.predict
    if p.items_from == "parquet":
        if not p.items_path:
            raise PredictError("predict.items_from is parquet but predict.items_path is not set")
        table = pq.read_table(p.items_path, columns=["item_id", "text"])
        source: dict[str, Any] = {"items_from": "parquet", "items_path": p.items_path}
    else:
        ds, ends = _kafka_read(cfg.kafka, cfg.kafka.items_topic, p.task_num_cpus)
        raw = ds.map_batches(_parse_items, batch_format="pyarrow", num_cpus=p.task_num_cpus).to_arrow_refs()
        import ray

        table = pa.concat_tables(ray.get(raw)) if raw else pa.table({"item_id": [], "text": []})
        table = table.filter(pc.and_(pc.is_valid(table["item_id"]), pc.is_valid(table["text"])))
        # Compacted topic: several records per id until compaction runs; the newest one wins
        # (one id always lands in one partition, so the highest offset is the newest).
        table = table.sort_by([("item_id", "ascending"), ("offset", "descending")])
        ids = table.column("item_id").to_numpy(zero_copy_only=False)
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        table = table.filter(pa.array(keep)).select(["item_id", "text"])
        source = {"items_from": "kafka", "items_topic": cfg.kafka.items_topic,
                  "items_end_offsets": {str(k): v for k, v in ends.items()}}
    if table.num_rows == 0:
        raise PredictError("the item catalogue is empty: nothing to embed")
    return table, source


def read_sequences(cfg: PreciseConfig) -> tuple[pa.Table, dict[str, Any]]:
    """(user_id, item_ids oldest first, at most max_sequence_length) per user."""
    p = cfg.predict
    if p.users_from == "parquet":
        if not p.sequences_path:
            raise PredictError("predict.users_from is parquet but predict.sequences_path is not set")
        return pq.read_table(p.sequences_path, columns=["user_id", "item_ids"]), {
            "users_from": "parquet", "sequences_path": p.sequences_path}
    import ray

    ds, ends = _kafka_read(cfg.kafka, cfg.kafka.events_topic, p.task_num_cpus)
    refs = ds.map_batches(_parse_events, batch_format="pyarrow", num_cpus=p.task_num_cpus).to_arrow_refs()
    events = pa.concat_tables(ray.get(refs)) if refs else None
    source = {"users_from": "kafka", "events_topic": cfg.kafka.events_topic,
              "events_end_offsets": {str(k): v for k, v in ends.items()}}
    if events is None or events.num_rows == 0:
        return pa.table({"user_id": pa.array([], pa.string()), "item_ids": pa.array([], pa.list_(pa.string()))}), source
    if p.sequence_actions:
        events = events.filter(pc.is_in(events["action"], pa.array(p.sequence_actions)))
    frame = events.to_pandas().sort_values(["user_id", "ts"], kind="stable")
    # A rating and a `like` of the same item are one step of the sequence, not two.
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="last")
    grouped = frame.groupby("user_id", sort=True)["item_id"].agg(lambda s: list(s)[-p.max_sequence_length:])
    return pa.table({"user_id": pa.array(grouped.index.tolist(), pa.string()),
                     "item_ids": pa.array(grouped.tolist(), pa.list_(pa.string()))}), source


# ---- the job ------------------------------------------------------------------------------------


@dataclass
class PredictResult:
    snapshot: SnapshotRef
    items: int
    users: int
    users_reused_from: str | None
    pruned: list[str]

    def summary(self) -> dict[str, Any]:
        m = self.snapshot.manifest
        return {"task": self.snapshot.task, "version": self.snapshot.version, "path": str(self.snapshot.path),
                "model_version": m["model_version"], "items": self.items, "users": self.users,
                "users_reused_from": self.users_reused_from, "index": m["index"], "pruned": self.pruned}


def _single_model_version(table: pa.Table, what: str) -> str | None:
    versions = pc.unique(table.column("model_version")).to_pylist()
    if len(versions) > 1:
        raise PredictError(f"{what} were embedded by several model versions {versions}: workers disagree")
    return versions[0] if versions else None


def run_predict(cfg: PreciseConfig, cycle: Cycle = "all") -> PredictResult:
    """Embed items (and users unless an items-only cycle can reuse them) and publish a snapshot."""
    import ray
    import ray.data

    p = cfg.predict
    if p.items_from == "parquet" and not p.items_path:
        raise PredictError("predict.items_from is parquet but predict.items_path is not set")
    if p.users_from == "parquet" and not p.sequences_path:
        raise PredictError("predict.users_from is parquet but predict.sequences_path is not set")
    if not ray.is_initialized():
        ray.init()
    store = SnapshotStore(cfg.storage.resolved_root(), p.task)
    actor = {"compute": ray.data.ActorPoolStrategy(size=p.num_actors), "batch_size": p.batch_size,
             "batch_format": "pyarrow", "num_cpus": p.actor_num_cpus,
             "fn_constructor_kwargs": {"import_path": p.embedder.import_path, "kwargs": p.embedder.kwargs,
                                       "threads": p.threads_per_actor}}

    catalog, sources = read_catalog(cfg)
    refs = ray.data.from_arrow(catalog).map_batches(ItemEmbedActor, **actor).to_arrow_refs()
    items = pa.concat_tables(ray.get(refs))
    model_version = _single_model_version(items, "items")
    item_vectors = vectors_from_arrow(items.column("vector"))

    previous = store.latest()
    reuse = (cycle == "items" and previous is not None and previous.manifest["model_version"] == model_version
             and previous.manifest["dim"] == item_vectors.shape[1])
    if cycle == "items" and not reuse:
        log.warning("items-only cycle: no LATEST snapshot of model %s to take users from; embedding users too",
                    model_version)
    with store.writer() as writer:
        writer.write_items(items.column("item_id").to_pylist(), item_vectors)
        users_skipped = 0
        if reuse:
            writer.reuse_users(previous)
            sources["users_reused_from"] = previous.version
        else:
            sequences, user_source = read_sequences(cfg)
            sources.update(user_source)
            if sequences.num_rows:
                # One pass; blocks come back one at a time and are written as they arrive, so the
                # driver never holds every user vector (one Ray Data execution, no extra passes).
                refs = ray.data.from_arrow(sequences).map_batches(UserEmbedActor, **actor).to_arrow_refs()
                embedded = 0
                for part, block_ref in enumerate(refs):
                    block = ray.get(block_ref)
                    version = _single_model_version(block, "users")
                    if version not in (None, model_version):
                        raise PredictError(f"users embedded by model {version}, items by {model_version}")
                    writer.write_user_part(block.select(["user_id", "vector"]), part)
                    embedded += block.num_rows
                users_skipped = sequences.num_rows - embedded
        try:
            ref = writer.publish(model_version=model_version,
                                 embedder={"import_path": p.embedder.import_path, "kwargs": p.embedder.kwargs},
                                 build_index=index_builder(p.index), recall_queries=p.index.recall_queries,
                                 extra={"cycle": cycle, "users_skipped": users_skipped, "sources": sources})
        except SnapshotError as exc:
            raise PredictError(str(exc)) from None
    best_effort(snapshot_published, ref.task, ref.version, ref.manifest)
    pruned = store.prune(p.keep_versions)
    return PredictResult(ref, ref.manifest["num_items"], ref.manifest["num_users"],
                         sources.get("users_reused_from"), pruned)
