"""The item index: FAISS over L2-normalised vectors, so inner product is cosine similarity.

The index type follows the catalogue size (config `predict.index`): exact search (`IndexFlatIP`)
while it is small enough to scan per query, then HNSW or IVF. Approximate indexes trade recall for
speed, so every snapshot measures recall@k against exact search on sampled queries and records it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import faiss
import numpy as np

from precise.config import IndexConfig
from precise.store.snapshots import IndexBuilder, IndexInfo

FLAT, HNSW, IVF = "flat_ip", "hnsw", "ivf_flat"


def build_index(vectors: np.ndarray, config: IndexConfig) -> tuple[faiss.Index, IndexInfo]:
    """An index over normalised `vectors` ([n, d]); FAISS id i is row i."""
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("cannot build an index over zero items")
    started = time.perf_counter()
    if n <= config.exact_max_items:
        index: faiss.Index = faiss.IndexFlatIP(dim)
        info = IndexInfo(FLAT)
    elif config.approximate == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
        info = IndexInfo(HNSW, {"m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction,
                                "ef_search": config.hnsw_ef_search})
    else:
        # ~4 sqrt(n) lists is FAISS's usual starting point; at least 39 training points per list.
        nlist = config.ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        # (FAISS's Python wrapper keeps `quantizer` alive as long as the index.)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if n > 256 * nlist:  # FAISS needs no more than this to train k-means well
            rows = np.random.default_rng(0).choice(n, 256 * nlist, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample)
        index.nprobe = min(config.ivf_nprobe, nlist)
        info = IndexInfo(IVF, {"nlist": nlist, "nprobe": index.nprobe})
    index.add(vectors)
    info.build_s = round(time.perf_counter() - started, 3)
    return index, info


def search_params(info: IndexInfo | dict[str, Any], k: int,
                  selector: faiss.IDSelector | None = None) -> faiss.SearchParameters | None:
    """Per-call search settings (thread-safe: nothing on the shared index object changes).

    HNSW needs efSearch >= k to return k good results; IVF's nprobe is not kept by write_index.
    `selector` restricts the search to the ids it selects (an item delta masks base rows with it).
    """
    kind = info.type if isinstance(info, IndexInfo) else info["type"]
    params = info.params if isinstance(info, IndexInfo) else info.get("params", {})
    extra = {} if selector is None else {"sel": selector}
    if kind == HNSW:
        return faiss.SearchParametersHNSW(efSearch=max(int(params["ef_search"]), k), **extra)
    if kind == IVF:
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]), **extra)
    return faiss.SearchParameters(**extra) if extra else None


def search(index: faiss.Index, queries: np.ndarray, k: int,
           info: IndexInfo | dict[str, Any] | None = None,
           selector: faiss.IDSelector | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k], ids [q, k]) of the top `k` items for each normalised query; id -1 pads."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    params = search_params(info or IndexInfo(FLAT), k, selector)
    if params is None:
        return index.search(queries, k)
    return index.search(queries, k, params=params)


def measure_recall(index: faiss.Index, info: IndexInfo, vectors: np.ndarray, queries: np.ndarray,
                   k: int) -> float:
    """Mean |top-k(index) ∩ top-k(exact)| / k over `queries` (exact = brute force on `vectors`)."""
    k = min(k, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, found = search(index, queries, k, info)
    hits = sum(len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True))
    return hits / (k * len(queries))


def build_and_measure(items: np.ndarray, queries: np.ndarray, config: IndexConfig,
                      seed: int = 0) -> tuple[faiss.Index, IndexInfo]:
    """Build the index for normalised `items` and record its recall@k on up to
    `config.recall_queries` rows sampled from `queries` (user vectors; items when there are none)."""
    index, info = build_index(items, config)
    pool = queries if len(queries) else items
    rows = np.random.default_rng(seed).choice(len(pool), min(config.recall_queries, len(pool)), replace=False)
    info.recall_k = min(config.recall_k, len(items))
    info.recall_queries = len(rows)
    info.recall_at_k = round(measure_recall(index, info, items, pool[np.sort(rows)], info.recall_k), 4)
    return index, info


def index_builder(config: IndexConfig) -> IndexBuilder:
    """What a snapshot writer calls to index its items: `build_and_measure` with these settings."""
    return lambda items, queries: build_and_measure(items, queries, config)
