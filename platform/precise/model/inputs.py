"""How sequences enter the models: item indices, *right-aligned*.

The most recent item sits in the last column and padding (index 0) fills the left, as in the
original SASRec. That keeps "user embedding = output at the last position" a plain `[:, -1]`, lets
the positional embedding mean "recency", and gives the targeted model's MLP-over-all-positions a
fixed meaning per column whatever the sequence length.
"""

from __future__ import annotations

import numpy as np


def right_aligned(seqs: list[np.ndarray] | tuple[np.ndarray, ...], max_len: int) -> np.ndarray:
    """Stack the last `max_len` items of each sequence, most recent item in the last column."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = seq[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out
