"""Shared test fixtures. The machine has 2 shared cores: keep torch to them explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def random_token_table(
    num_items: int, m: int = 6, dim: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in for precise.text output already projected: [n + 1, m, dim] states and a mask
    with 1..m valid tokens per item (row 0 = padding: one zero token)."""
    rng = np.random.default_rng(seed)
    states = rng.standard_normal((num_items + 1, m, dim)).astype(np.float32)
    lengths = rng.integers(1, m + 1, num_items + 1)
    mask = np.arange(m)[None, :] < lengths[:, None]
    states[~mask] = 0.0
    states[0] = 0.0
    mask[0] = False
    mask[0, 0] = True
    return states, mask


@pytest.fixture
def token_table_small() -> tuple[np.ndarray, np.ndarray]:
    return random_token_table(30)
