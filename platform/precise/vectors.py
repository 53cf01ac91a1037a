"""Embedding vectors as the platform stores and compares them: L2-normalised float32 rows, kept in
Arrow as fixed-size lists (Parquet columns of snapshots and vector tables)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, contiguous); all-zero rows stay zero."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        return normalize(vectors[None, :])[0]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def vectors_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> / fixed_size_list<float> column as a dense [n, d] float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if lengths.min() != lengths.max():
            raise ValueError(f"vectors have different lengths ({lengths.min()}..{lengths.max()})")
        dim = int(lengths[0])
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), dim)


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
