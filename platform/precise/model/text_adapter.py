"""From LLM token states to the model's trainable token table (the `x_i` of paper eq. 2).

`precise.text.item_token_embeddings(...)` returns, per item, the hidden states of its first `m`
text tokens: float16 `states [n, m, d_llm]` and `mask [n, m]`. The paper keeps these token
embeddings *trainable*. Storing them trainable at d_llm is heavy (ML-1M: 3706 x 32 x 576 = 68M
floats, and the MoE would then project 118k token vectors every step), so we project them once,
at build time, to `token_dim` with PCA, and train that `[n + 1, m, token_dim]` table instead:

* PCA (not a random projection) keeps as much of the LLM geometry as `token_dim` dimensions can;
* each token state is L2-normalised first, because decoder LLMs put a few huge-norm "attention
  sink" tokens (the first one, usually) that would otherwise own the top components;
* the projected table is scaled to unit RMS so the experts' initialisation does not depend on d_llm.

The per-step cost of the fusion tower is then independent of the LLM width.

`hashed_token_embeddings` is a development stand-in with the same shapes: each whitespace word of
the item text gets a fixed pseudo-random vector (seeded by its hash). It carries real signal (shared
genre words, years, title words) but no language understanding; results obtained with it are
labelled `text_model: hashed` and are not PRECISE results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from precise.text.embeddings import TokenEmbeddings


def hashed_token_embeddings(
    item_texts: Mapping[str, str], max_tokens: int = 32, dim: int = 64
) -> TokenEmbeddings:
    """Deterministic stand-in for LLM token states: one pseudo-random vector per distinct word."""
    item_ids = list(item_texts)
    states = np.zeros((len(item_ids), max_tokens, dim), dtype=np.float16)
    mask = np.zeros((len(item_ids), max_tokens), dtype=bool)
    cache: dict[str, np.ndarray] = {}
    for row, item in enumerate(item_ids):
        words = item_texts[item].lower().replace(",", " ").replace(".", " ").split()[:max_tokens]
        for col, word in enumerate(words):
            if word not in cache:
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                cache[word] = np.random.default_rng(seed).standard_normal(dim).astype(np.float16)
            states[row, col] = cache[word]
            mask[row, col] = True
    return TokenEmbeddings(item_ids, states, mask, "hashed", dim, max_tokens)


def load_token_states(
    item_texts: Mapping[str, str], model: str, max_tokens: int, **kwargs: object
) -> TokenEmbeddings:
    """Token states from `precise.text` (or the hashed stand-in when `model == "hashed"`); `kwargs` go to
    `item_token_embeddings` (e.g. `pool`: encode in a Ray Data actor pool)."""
    if model == "hashed":
        return hashed_token_embeddings(item_texts, max_tokens=max_tokens)
    try:
        from precise.text import item_token_embeddings  # noqa: PLC0415 (optional stage)
    except ImportError as err:
        raise RuntimeError(
            f"text model {model!r} needs precise.text.item_token_embeddings, which is not available "
            f"({err}); use text model 'hashed' for the development stand-in"
        ) from err
    return item_token_embeddings(item_texts, model=model, max_tokens=max_tokens, **kwargs)


@dataclass(frozen=True)
class TokenProjection:
    """The fixed map from LLM token states to the token table's width (PCA, then unit RMS).

    Kept with a model version so items that arrive later are projected into the same space as the
    rows the model already trained (incremental training never refits it)."""

    mean: np.ndarray  # [d_llm]
    components: np.ndarray  # [d_llm, token_dim]
    scale: float

    def apply(self, states: np.ndarray) -> np.ndarray:
        """Project L2-normalised token vectors [..., d_llm] -> [..., token_dim]."""
        unit = states / np.maximum(np.linalg.norm(states, axis=-1, keepdims=True), 1e-6)
        return ((unit - self.mean) @ self.components / self.scale).astype(np.float32)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "scale": np.array([self.scale])}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TokenProjection:
        return cls(np.asarray(arrays["mean"]), np.asarray(arrays["components"]), float(arrays["scale"][0]))


def fit_token_projection(tokens: TokenEmbeddings, token_dim: int) -> TokenProjection:
    """PCA of the (L2-normalised) valid token vectors, scaled so the projection has unit RMS."""
    states = np.asarray(tokens.states, dtype=np.float32)
    valid = states[np.asarray(tokens.mask, dtype=bool)]
    valid /= np.maximum(np.linalg.norm(valid, axis=1, keepdims=True), 1e-6)
    d = valid.shape[1]
    mean = valid.mean(axis=0)
    centred = valid - mean
    if token_dim < d and len(centred) > 1:
        # Top principal directions of the token cloud (eigh of the d x d covariance: cheap).
        _, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
        components = np.ascontiguousarray(vectors[:, ::-1][:, :token_dim])
    else:
        components = np.eye(d, token_dim, dtype=np.float32)
    projected = centred @ components
    scale = max(float(np.sqrt((projected**2).mean())), 1e-6)
    return TokenProjection(mean.astype(np.float32), components.astype(np.float32), scale)


def token_table(
    tokens: TokenEmbeddings,
    item_ids: Sequence[str],
    token_dim: int,
    projection: TokenProjection | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Project token states to `token_dim` and lay them out by item index.

    Returns `table float32 [n + 1, m, token_dim]` and `mask bool [n + 1, m]` where row i is the item
    `item_ids[i - 1]`. Row 0 (padding) and items without text get one valid all-zero token, so
    attention pooling over them is defined and yields zero. `projection` defaults to a PCA fitted
    on these tokens (`fit_token_projection`); pass a model version's own to extend its table.
    """
    states = np.asarray(tokens.states, dtype=np.float32)
    mask = np.asarray(tokens.mask, dtype=bool)
    n, m, _ = states.shape
    if mask.shape != (n, m) or len(tokens.item_ids) != n:
        raise ValueError(
            f"token states {states.shape}, mask {mask.shape}, {len(tokens.item_ids)} ids disagree"
        )
    projection = projection or fit_token_projection(tokens, token_dim)
    if projection.components.shape[1] != token_dim:
        raise ValueError(f"projection width {projection.components.shape[1]} != token_dim {token_dim}")
    per_item = np.zeros((n, m, token_dim), dtype=np.float32)
    per_item[mask] = projection.apply(states[mask])
    row_of = {item: row for row, item in enumerate(tokens.item_ids)}
    table = np.zeros((len(item_ids) + 1, m, token_dim), dtype=np.float32)
    table_mask = np.zeros((len(item_ids) + 1, m), dtype=bool)
    for index, item in enumerate(item_ids, start=1):
        row = row_of.get(item)
        if row is not None and mask[row].any():
            table[index] = per_item[row]
            table_mask[index] = mask[row]
    table_mask[~table_mask.any(axis=1), 0] = True
    return table, table_mask


def save_token_table(
    path: Path, table: np.ndarray, mask: np.ndarray, item_ids: Sequence[str], model: str
) -> None:
    """Store a projected token table (float16: it is an initialisation, and it halves the file:
    ML-1M at token_dim 50 is 12 MB, small enough to carry to a GPU machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, table=table.astype(np.float16), mask=mask, item_ids=np.asarray(item_ids, dtype=str), model=model
    )
    tmp.replace(path)


def load_token_table(path: Path, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """A table saved by `save_token_table` for exactly these items (same order), else None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if data["item_ids"].tolist() != list(item_ids):
            return None
        return data["table"].astype(np.float32), data["mask"], str(data["model"])
