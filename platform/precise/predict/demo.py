"""Snapshots of fixed random vectors, for tests, benchmarks and trying the service without a model.

The vectors are real inputs to the real pipeline pieces (snapshot writer, FAISS, TableEmbedder,
Serve); only their values are made up, deterministically from `seed`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from precise.config import IndexConfig
from precise.predict.embedders import write_vector_table
from precise.predict.index import index_builder
from precise.store.snapshots import SnapshotRef, SnapshotStore, text_hash
from precise.vectors import normalize


@dataclass
class RandomVectors:
    user_ids: list[str]
    users: np.ndarray  # normalised, as stored in the snapshot
    item_ids: list[str]
    items: np.ndarray  # normalised
    table_path: Path  # the TableEmbedder's item table


def random_vectors(users: int, items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((users, dim)).astype(np.float32),
            rng.standard_normal((items, dim)).astype(np.float32))


def publish_random_snapshot(root: str | Path, task: str, *, users: int, items: int, dim: int, seed: int,
                            model_version: str, index: IndexConfig | None = None,
                            tails: dict[str, list[str]] | None = None,
                            sequences_until_ms: int | None = None,
                            item_texts: list[str] | None = None) -> tuple[SnapshotRef, RandomVectors]:
    """Write a TableEmbedder table and publish a snapshot of `users` x `items` random vectors;
    `tails` (user -> sequence tail) are stored for real-time serving, events after
    `sequences_until_ms` count as live (default: the publishing time); `item_texts` (of i0, i1, ...)
    are recorded as the texts the items were embedded from (an item cycle re-embeds what changes)."""
    user_vectors, item_vectors = random_vectors(users, items, dim, seed)
    user_ids = [f"u{n}" for n in range(users)]
    item_ids = [f"i{n}" for n in range(items)]
    table = Path(root) / "tables" / task / f"{model_version}-{seed}.parquet"
    table.parent.mkdir(parents=True, exist_ok=True)
    write_vector_table(table, item_ids, item_vectors)
    store = SnapshotStore(root, task)
    with store.writer() as writer:
        writer.write_items(item_ids, item_vectors, None if item_texts is None else [text_hash(t) for t in item_texts])
        writer.write_users(user_ids, user_vectors,
                           tails=None if tails is None else [tails.get(u, []) for u in user_ids])
        extra: dict = {"sources": {"random_seed": seed}, "sequence_rules": {"max_len": 50}}
        if sequences_until_ms is not None:
            extra["sequences_until_ms"] = sequences_until_ms
        ref = writer.publish(model_version=model_version,
                             embedder={"import_path": "precise.predict.embedders:TableEmbedder",
                                       "kwargs": {"items_path": str(table), "model_version": model_version}},
                             build_index=index_builder(index or IndexConfig()),
                             extra=extra)
    return ref, RandomVectors(user_ids, normalize(user_vectors), item_ids, normalize(item_vectors), table)


def main(argv: list[str] | None = None) -> int:
    """`python -m precise.predict.demo`: publish a random snapshot to try the service without a model."""
    import argparse
    import json

    from precise.config import load_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", help="platform config (storage.root)")
    parser.add_argument("--root", help="storage root (default: the config's, else PRECISE_HOME)")
    parser.add_argument("--task", default="default")
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="publish even if the task already serves a snapshot made from a real model")
    args = parser.parse_args(argv)
    root = args.root or load_config(args.config).storage.resolved_root()
    # Random vectors published over a real pipeline's snapshot would become the newest version and
    # be served: refuse unless the operator says so.
    latest = SnapshotStore(root, args.task).latest()
    real = latest is not None and not str(latest.manifest.get("model_version", "")).startswith("random-")
    if real and not args.force:
        print(f"error: task {args.task!r} serves snapshot {latest.version} of model "
              f"{latest.manifest.get('model_version')}; random vectors would replace it. Use another --task, "
              "or --force.", file=sys.stderr)
        return 1
    ref, _ = publish_random_snapshot(root, args.task, users=args.users, items=args.items, dim=args.dim,
                                     seed=args.seed, model_version=f"random-{args.seed}")
    print(json.dumps({"task": ref.task, "version": ref.version, "path": str(ref.path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
