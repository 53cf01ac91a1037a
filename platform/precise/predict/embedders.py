"""Concrete embedders usable without a trained PRECISE model.

`TableEmbedder` reads precomputed item vectors from Parquet (any model's output, or fixed random
vectors for tests and benchmarks), embeds items it has no row for from their text with a
deterministic hashing encoder (the cold-start path), and embeds a user as the recency-weighted mean
of their items' vectors. It is a stand-in with the exact interface of the real model.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precise.vectors import vectors_from_arrow, vectors_to_arrow

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingTextEncoder:
    """Text -> vector: the mean of one fixed pseudo-random Gaussian vector per lowercase word.

    Each word's vector is seeded by a stable hash of the word (not Python's salted `hash`), so every
    process, replica and run gives the same vector for the same text; texts sharing words get
    similar vectors.
    """

    def __init__(self, dim: int, seed: int = 0, cache_size: int = 100_000) -> None:
        self.dim = dim
        self.seed = seed
        self._cache: dict[str, np.ndarray] = {}
        self._cache_size = cache_size

    def _word(self, word: str) -> np.ndarray:
        vector = self._cache.get(word)
        if vector is None:
            digest = hashlib.blake2b(f"{self.seed}:{word}".encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            vector = rng.standard_normal(self.dim).astype(np.float32)
            if len(self._cache) < self._cache_size:
                self._cache[word] = vector
        return vector

    def encode(self, text: str) -> np.ndarray:
        words = _TOKEN.findall(text.lower())
        if not words:
            raise KeyError(f"text {text[:40]!r} has no word to embed")
        return np.mean([self._word(w) for w in words], axis=0).astype(np.float32)


def read_vector_table(path: str | Path, id_column: str = "item_id") -> tuple[list[str], np.ndarray]:
    """(ids, [n, d] float32) from a Parquet file with an id column and a list-of-float `vector`."""
    table = pq.read_table(path, columns=[id_column, "vector"])
    ids = table.column(id_column).to_pylist()
    vectors = vectors_from_arrow(table.column("vector"))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids in column {id_column!r}")
    return ids, vectors


def write_vector_table(path: str | Path, ids: list[str], vectors: np.ndarray, id_column: str = "item_id") -> None:
    table = pa.table({id_column: pa.array(ids, pa.string()), "vector": vectors_to_arrow(vectors)})
    pq.write_table(table, path)


class TableEmbedder:
    """Item vectors from a Parquet table; text-only items hashed; users = recency-weighted item mean.

    Args:
        items_path: Parquet with `item_id` and `vector` (list of float, one length).
        model_version: the version of whatever produced the table (recorded in every snapshot).
        recency_decay: weight of an item relative to the one after it in a user's sequence.
        text_seed: seed of the hashing text encoder.
    """

    def __init__(self, items_path: str, model_version: str, recency_decay: float = 0.9, text_seed: int = 0) -> None:
        if not 0 < recency_decay <= 1:
            raise ValueError(f"recency_decay must be in (0, 1], got {recency_decay}")
        ids, self._vectors = read_vector_table(items_path)
        if len(ids) == 0:
            raise ValueError(f"{items_path}: no item vectors")
        self._row = {item_id: i for i, item_id in enumerate(ids)}
        self.model_version = model_version
        self.dim = int(self._vectors.shape[1])
        self.recency_decay = recency_decay
        self._text = HashingTextEncoder(self.dim, seed=text_seed)

    def embed_items(self, item_ids: list[str], texts: list[str] | None) -> np.ndarray:
        if texts is not None and len(texts) != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but {len(texts)} texts")
        out = np.empty((len(item_ids), self.dim), dtype=np.float32)
        for i, item_id in enumerate(item_ids):
            row = self._row.get(item_id)
            if row is not None:
                out[i] = self._vectors[row]
            elif texts is not None and texts[i]:
                out[i] = self._text.encode(texts[i])
            else:
                raise KeyError(f"item {item_id!r} is unknown to model {self.model_version} and has no text")
        return out

    def embed_user_sequence(self, item_ids: list[str]) -> np.ndarray:
        rows = [self._row[i] for i in item_ids if i in self._row]
        if not rows:
            raise KeyError(f"none of the {len(item_ids)} items of the sequence is known to model {self.model_version}")
        # Newest item weight 1, the one before it `decay`, and so on: recent interests count most.
        weights = self.recency_decay ** np.arange(len(rows) - 1, -1, -1, dtype=np.float32)
        return (weights @ self._vectors[rows] / weights.sum()).astype(np.float32)
