"""On-disk cache of per-text token states: one small `.npy` per distinct text.

Layout: `<root>/<model>-m<max_tokens>-v<FORMAT_VERSION>/<sha[:2]>/<sha>.npy`, where `sha` is the
sha256 of the UTF-8 text. Each file holds only the text's real tokens, float16 `[n_tokens, dim]`
(1 <= n_tokens <= max_tokens); the mask is implied by the row count.

One file per text keeps writes independent: a file is written to a unique temp name, fsynced and
renamed into place, so readers (other processes included) see either nothing or a whole file, and two
writers racing on the same text both leave a valid file. A file that still fails to load or has the
wrong shape is treated as a miss and rewritten, so a damaged cache heals instead of failing.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from precise.store.files import write_local

# Bump when what a file means changes (layout, extraction rule, model file) so old entries are ignored.
FORMAT_VERSION = 1


def text_key(text: str) -> str:
    """Cache key of a text: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TokenCache:
    """Token states of one (model, max_tokens) pair, addressed by `text_key`."""

    def __init__(self, root: Path, model: str, max_tokens: int, dim: int) -> None:
        self.dir = Path(root) / f"{model}-m{max_tokens}-v{FORMAT_VERSION}"
        self.max_tokens = max_tokens
        self.dim = dim

    def path(self, key: str) -> Path:
        # Two-hex fan-out keeps directories small when the catalogue grows to millions of items.
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached float16 `[n_tokens, dim]` states, or None when absent or unreadable."""
        try:
            states = np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        ok = (states.dtype == np.float16 and states.ndim == 2 and states.shape[1] == self.dim
              and 1 <= states.shape[0] <= self.max_tokens)
        return states if ok else None

    def put(self, key: str, states: np.ndarray) -> None:
        """Store states atomically (temp file in the same folder, fsync, rename)."""
        if states.dtype != np.float16 or states.ndim != 2 or states.shape[1] != self.dim:
            raise ValueError(f"expected float16 [n, {self.dim}] states, got {states.dtype} {states.shape}")
        buffer = io.BytesIO()
        np.save(buffer, states, allow_pickle=False)
        # a cache: a file lost in a crash only costs a re-encode (a damaged one is a miss), so no fsync
        write_local(self.path(key), buffer.getvalue(), durable=False)
