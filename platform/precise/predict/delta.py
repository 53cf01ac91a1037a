"""An item cycle: embed only the catalogue's new and changed items and publish them as an item delta.

Between full cycles the catalogue moves: items appear, their text changes, some are deleted. An
item cycle reads the catalogue (the lake's item table, as a full cycle does), compares each item's
text hash with the one the served snapshot recorded, embeds only the items that are new or whose
text changed, with the embedder of the task's LATEST snapshot (its exact model version), and
publishes a delta over LATEST's full snapshot (precise.store.snapshots): the new and changed items
with their vectors, and the base items that left the catalogue. Deltas are cumulative over their
base, so an item embedded by an earlier item cycle keeps that vector when its text has not changed
since. Serving adds the delta to the base's index without rebuilding it (precise.serving.state).
Nothing changed: nothing is embedded and nothing published.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from precise.config import PreciseConfig
from precise.metrics import best_effort
from precise.metrics.predict import snapshot_published
from precise.predict.job import PredictError, catalog_hashes, embed_catalog, read_catalog
from precise.runtime import connect_ray
from precise.store.snapshots import SnapshotError, SnapshotStore, base_ref, read_item_delta, read_item_hashes
from precise.vectors import vectors_from_arrow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogChange:
    """How the catalogue differs from what a snapshot serves."""

    new: list[str]  # not served
    changed: list[str]  # served, but from another text (or from a text whose hash was not recorded)
    deleted: list[str]  # served, no longer in the catalogue

    @property
    def to_embed(self) -> list[str]:
        return self.new + self.changed


def catalog_change(catalog: dict[str, str | None], served: dict[str, str | None]) -> CatalogChange:
    """Compare catalogue text hashes (item -> hash) with the served ones."""
    new = [i for i in catalog if i not in served]
    changed = [i for i in catalog if i in served and (served[i] is None or served[i] != catalog[i])]
    deleted = sorted(set(served) - set(catalog))
    return CatalogChange(new, changed, deleted)


def run_item_cycle(cfg: PreciseConfig) -> dict[str, Any] | None:
    """One item cycle for `cfg.predict.task`; its summary (`embedded`: how many items were run
    through the model), or None when the task has no snapshot yet (a full cycle publishes one)."""
    store = SnapshotStore(cfg.storage.resolved_root(), cfg.predict.task)
    latest = store.latest()
    if latest is None:
        return None
    base = base_ref(latest)
    catalog, sources = read_catalog(cfg)
    hashes = catalog_hashes(catalog)
    change = catalog_change(hashes, read_item_hashes(latest))
    summary: dict[str, Any] = {"task": store.task, "base": base.version,
                               "model_version": latest.manifest["model_version"], "new": len(change.new),
                               "changed": len(change.changed), "deleted": len(change.deleted),
                               "embedded": len(change.to_embed)}
    if not change.to_embed and not change.deleted:
        return {**summary, "version": latest.version, "published": False, "items": latest.manifest["num_items"]}

    ids: list[str] = []
    vectors = np.zeros((0, int(base.manifest["dim"])), np.float32)
    if change.to_embed:
        connect_ray()  # ships this `precise` to the embedding actors (precise.runtime)
        spec = latest.manifest["embedder"]
        todo = catalog.filter(pc.is_in(catalog.column("item_id"), pa.array(change.to_embed, pa.string())))
        items, model_version = embed_catalog(cfg, todo, {"import_path": spec["import_path"],
                                                         "kwargs": spec.get("kwargs") or {}})
        if model_version != latest.manifest["model_version"]:
            raise PredictError(f"the item cycle's embedder loads model {model_version}, snapshot {latest.version} "
                               f"was made by {latest.manifest['model_version']}")
        ids, vectors = items.column("item_id").to_pylist(), vectors_from_arrow(items.column("vector"))

    # cumulative over the base: what earlier deltas embedded and is unchanged stays
    previous = read_item_delta(latest)
    embedded = set(ids)
    if previous is not None:
        carried = [n for n, i in enumerate(previous.item_ids) if i in hashes and i not in embedded]
        ids = [previous.item_ids[n] for n in carried] + ids
        vectors = np.concatenate([previous.vectors[carried], vectors])
    base_items = set(read_item_hashes(base))
    deleted = sorted(base_items - set(hashes))
    try:
        ref = store.publish_item_delta(base, ids, vectors, [hashes[i] for i in ids], deleted,
                                       latest.manifest["model_version"],
                                       extra={"cycle": "items", "sources": sources, "previous": latest.version,
                                              "embedded": summary})
    except SnapshotError as exc:
        raise PredictError(str(exc)) from None
    best_effort(snapshot_published, ref.task, ref.version, ref.manifest)
    pruned = store.prune(cfg.predict.keep_versions)
    log.info("item cycle: %d new, %d changed, %d deleted items; delta %s over %s", len(change.new),
             len(change.changed), len(change.deleted), ref.version, base.version)
    return {**summary, "version": ref.version, "published": True, "items": ref.manifest["num_items"],
            "users": ref.manifest["num_users"], "users_reused_from": base.version, "pruned": pruned}
