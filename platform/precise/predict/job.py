"""Batch prediction with Ray Data: every catalogue item and every user -> an embedding snapshot.

Inputs come from the store, never from Kafka: ingest has validated and deduplicated them already.
Items are the lake's item table (every item of `item-catalog` not deleted, with its text: a new
item known only by its text is embedded from it, the cold-start path) or a Parquet file. Users are
their sequences in the lake, read with exactly the sequence rules of the model that embeds them (a
targeted model reads its target family, at its window), or a Parquet file of (user_id, item_ids).
Embedding runs in `map_batches` on an actor pool, each actor loading the embedder once; the model
version is pinned before the actors start, so all of them (and every replica that serves the
snapshot) use the same one.

An items-only cycle (items hourly, users daily) carries the user vectors of the LATEST snapshot
over when the same model version made them; after a model change it recomputes the users too, so
a snapshot never holds vectors of two model versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from precise.config import PreciseConfig
from precise.metrics import best_effort
from precise.metrics.predict import snapshot_published
from precise.predict.embedder import REGISTRY_EMBEDDER, load_embedder, set_thread_counts
from precise.predict.index import index_builder
from precise.runtime import connect_ray
from precise.store.lake import read_items
from precise.store.sequences import read_sequences
from precise.store.snapshots import TAIL, SnapshotError, SnapshotRef, SnapshotStore, text_hash
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


def read_catalog(cfg: PreciseConfig) -> tuple[pa.Table, dict[str, Any]]:
    """(item_id, text) of every catalogue item; plus where it came from."""
    p = cfg.predict
    if p.items_from == "parquet":
        if not p.items_path:
            raise PredictError("predict.items_from is parquet but predict.items_path is not set")
        table = pq.read_table(p.items_path, columns=["item_id", "text"])
        source: dict[str, Any] = {"items_from": "parquet", "items_path": p.items_path}
    else:
        items = read_items(cfg.storage.resolved_root())
        live = pc.and_(pc.invert(pc.fill_null(items.column("deleted"), False)), pc.is_valid(items.column("text")))
        table = items.filter(live).select(["item_id", "text"])
        source = {"items_from": "lake", "deleted_items": items.num_rows - table.num_rows}
    if table.num_rows == 0:
        raise PredictError("the item catalogue is empty: nothing to embed (has the item topic been ingested?)")
    return table, source


def sequence_rules_of(cfg: PreciseConfig, embedder: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the embedder spec with its model version pinned, the sequence rules its users are read with)."""
    p = cfg.predict
    if embedder["import_path"] == REGISTRY_EMBEDDER:
        from precise.predict.model_embedder import pinned, sequence_rules

        kwargs, model = pinned({"root": cfg.storage.resolved_root(), **embedder["kwargs"]})
        return {**embedder, "kwargs": kwargs}, sequence_rules(model)
    family = p.sequence_family or cfg.sequences.all_scene.name
    spec = next((s for s in cfg.sequences.specs() if s.name == family), None)
    if spec is None:
        raise PredictError(f"predict.sequence_family {family!r} is not a configured sequence family")
    return embedder, {"family": family, "actions": spec.actions, "scenes": spec.scenes,
                      "max_len": p.max_sequence_length}


def read_users(cfg: PreciseConfig, rules: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    """(user_id, item_ids oldest first, the most recent `rules["max_len"]`) per user."""
    p = cfg.predict
    if p.users_from == "parquet":
        if not p.sequences_path:
            raise PredictError("predict.users_from is parquet but predict.sequences_path is not set")
        table = pq.read_table(p.sequences_path, columns=["user_id", "item_ids"])
        source: dict[str, Any] = {"users_from": "parquet", "sequences_path": p.sequences_path}
    else:
        table = read_sequences(cfg.storage.resolved_root(), rules["family"]).select(["user_id", "item_ids"])
        source = {"users_from": "lake", "family": rules["family"]}
    max_len = int(rules["max_len"])
    tails = [items[-max_len:] for items in table.column("item_ids").to_pylist()]
    return pa.table({"user_id": table.column("user_id"), "item_ids": pa.array(tails, pa.list_(pa.string()))}), source


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


def actor_options(cfg: PreciseConfig, embedder: dict[str, Any]) -> dict[str, Any]:
    """`map_batches` arguments of an embedding actor pool of `embedder` (import path + kwargs)."""
    import ray.data

    p = cfg.predict
    return {"compute": ray.data.ActorPoolStrategy(size=p.num_actors), "batch_size": p.batch_size,
            "batch_format": "pyarrow", "num_cpus": p.actor_num_cpus,
            "fn_constructor_kwargs": {**embedder, "threads": p.threads_per_actor}}


def embed_catalog(cfg: PreciseConfig, catalog: pa.Table, embedder: dict[str, Any]) -> tuple[pa.Table, str | None]:
    """(item_id, vector, model_version) of every (item_id, text) row of `catalog`, embedded by an
    actor pool of `embedder`; and the one model version that embedded them."""
    import ray
    import ray.data

    refs = ray.data.from_arrow(catalog).map_batches(ItemEmbedActor, **actor_options(cfg, embedder)).to_arrow_refs()
    items = pa.concat_tables(ray.get(refs))
    return items, _single_model_version(items, "items")


def catalog_hashes(catalog: pa.Table) -> dict[str, str | None]:
    """item -> `text_hash` of its text, for the snapshot (an item cycle re-embeds only what changed)."""
    return {i: text_hash(t) for i, t in zip(catalog.column("item_id").to_pylist(),
                                            catalog.column("text").to_pylist(), strict=True)}


def run_predict(cfg: PreciseConfig, cycle: Cycle = "all") -> PredictResult:
    """Embed items (and users unless an items-only cycle can reuse them) and publish a snapshot."""
    import ray
    import ray.data

    p = cfg.predict
    if p.items_from == "parquet" and not p.items_path:
        raise PredictError("predict.items_from is parquet but predict.items_path is not set")
    if p.users_from == "parquet" and not p.sequences_path:
        raise PredictError("predict.users_from is parquet but predict.sequences_path is not set")
    connect_ray()  # ships this `precise` to the embedding actors (precise.runtime)
    store = SnapshotStore(cfg.storage.resolved_root(), p.task)
    embedder, rules = sequence_rules_of(cfg, {"import_path": p.embedder.import_path, "kwargs": p.embedder.kwargs})
    actor = actor_options(cfg, embedder)

    catalog, sources = read_catalog(cfg)
    items, model_version = embed_catalog(cfg, catalog, embedder)
    item_vectors = vectors_from_arrow(items.column("vector"))

    previous = store.latest()
    reuse = (cycle == "items" and previous is not None and previous.manifest["model_version"] == model_version
             and previous.manifest["dim"] == item_vectors.shape[1])
    if cycle == "items" and not reuse:
        log.warning("items-only cycle: no LATEST snapshot of model %s to take users from; embedding users too",
                    model_version)
    with store.writer() as writer:
        hashes = catalog_hashes(catalog)
        item_ids = items.column("item_id").to_pylist()
        writer.write_items(item_ids, item_vectors, [hashes[i] for i in item_ids])
        users_skipped = 0
        if reuse:
            writer.reuse_users(previous)
            sources["users_reused_from"] = previous.version
        else:
            sequences, user_source = read_users(cfg, rules)
            sources.update(user_source)
            if sequences.num_rows:
                # One pass; blocks come back one at a time and are written as they arrive, so the
                # driver never holds every user vector (one Ray Data execution, no extra passes).
                refs = ray.data.from_arrow(sequences).map_batches(UserEmbedActor, **actor).to_arrow_refs()
                # each user's tail goes into the snapshot next to its vector: real-time serving
                # extends it with the user's live events (serve.user_vector_mode: realtime)
                tail_of = dict(zip(sequences.column("user_id").to_pylist(),
                                   sequences.column("item_ids").to_pylist(), strict=True))
                embedded = 0
                for part, block_ref in enumerate(refs):
                    block = ray.get(block_ref)
                    version = _single_model_version(block, "users")
                    if version not in (None, model_version):
                        raise PredictError(f"users embedded by model {version}, items by {model_version}")
                    users = block.select(["user_id", "vector"])
                    tails = [tail_of[u] for u in users.column("user_id").to_pylist()]
                    writer.write_user_part(users.append_column(TAIL, pa.array(tails, pa.list_(pa.string()))), part)
                    embedded += block.num_rows
                users_skipped = sequences.num_rows - embedded
        try:
            ref = writer.publish(model_version=model_version, embedder=embedder,
                                 build_index=index_builder(p.index), recall_queries=p.index.recall_queries,
                                 extra={"cycle": cycle, "users_skipped": users_skipped, "sources": sources,
                                        "sequence_rules": rules})
        except SnapshotError as exc:
            raise PredictError(str(exc)) from None
    best_effort(snapshot_published, ref.task, ref.version, ref.manifest)
    pruned = store.prune(p.keep_versions)
    return PredictResult(ref, ref.manifest["num_items"], ref.manifest["num_users"],
                         sources.get("users_reused_from"), pruned)
