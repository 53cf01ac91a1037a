"""Turning FAISS results into ranked answers: U2I exclusion and U2I2I neighbour merging.

Pure functions over one `ServedSnapshot`'s item ids, so they are tested without Ray or HTTP.
A vector that is not finite is never served: `require_finite` guards every query vector and
every vector an answer returns, and the rankings skip scores that are not finite (an item whose
stored vector is NaN scores NaN against any query).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np


class VectorError(ValueError):
    """A vector with NaN or infinite values: a broken snapshot or model, never an answer (HTTP 500)."""


def require_finite(vector: np.ndarray, what: str) -> np.ndarray:
    """`vector` itself if every value is finite; VectorError naming `what` otherwise."""
    if not np.isfinite(vector).all():
        raise VectorError(f"{what} is not finite (NaN or infinity)")
    return vector


def fetch_size(k: int, excluded: int, total: int) -> int:
    """How many neighbours to ask FAISS for so that `k` remain after dropping `excluded` ids."""
    return max(1, min(total, k + excluded))


def rank_u2i(item_ids: list[str], scores: np.ndarray, ids: np.ndarray, k: int,
             exclude: Collection[str] = ()) -> list[dict[str, Any]]:
    """The top `k` of one query's results, best first, without excluded items and FAISS padding."""
    hits: list[dict[str, Any]] = []
    for score, faiss_id in zip(scores.tolist(), ids.tolist(), strict=True):
        if faiss_id < 0 or not math.isfinite(score):
            continue  # FAISS pads with -1 when it finds fewer than asked
        item_id = item_ids[faiss_id]
        if item_id in exclude:
            continue
        hits.append({"item_id": item_id, "score": float(score)})
        if len(hits) == k:
            break
    return hits


def merge_u2i2i(item_ids: list[str], seeds: list[str], scores: np.ndarray, ids: np.ndarray, k: int,
                exclude: Collection[str] = ()) -> list[dict[str, Any]]:
    """Merge the neighbour lists of several seed items (most recent seed first) into one ranking.

    A candidate found from several seeds keeps its best similarity; ties go to the more recent
    seed. Seeds themselves and excluded items never appear.
    """
    skip = set(exclude) | set(seeds)
    best: dict[str, tuple[float, int]] = {}
    for seed_rank, (row_scores, row_ids) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
        for score, faiss_id in zip(row_scores, row_ids, strict=True):
            if faiss_id < 0 or not math.isfinite(score):
                continue
            item_id = item_ids[faiss_id]
            if item_id in skip:
                continue
            current = best.get(item_id)
            if current is None or score > current[0]:
                best[item_id] = (score, seed_rank)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[0]))[:k]
    return [{"item_id": item, "score": float(score), "seed_item_id": seeds[seed]}
            for item, (score, seed) in ranked]
