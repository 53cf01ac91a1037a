"""Item text -> LLM token embeddings (the paper's `x_i`), computed once per distinct text."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from precise import paths
from precise.text.cache import TokenCache, text_key
from precise.text.models import load_text_model, model_spec
from precise.text.pool import EncodePool, encode_on_ray


@dataclass
class TokenEmbeddings:
    """Token states of items, row `i` belonging to `item_ids[i]`.

    `states` is float16 `[n, max_tokens, dim]` with zeros where `mask` (bool `[n, max_tokens]`) is
    False; every row has at least one True, and the True slots come first, in text order.
    """

    item_ids: list[str]
    states: np.ndarray
    mask: np.ndarray
    model: str
    dim: int
    max_tokens: int


def item_token_embeddings(
    item_texts: Mapping[str, str],
    model: str = "smollm2",
    max_tokens: int = 32,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    pool: EncodePool | None = None,
) -> TokenEmbeddings:
    """Last-layer LLM states of each item's text tokens, in the order of `item_texts`.

    States are cached on disk keyed by (model, max_tokens, sha256 of the text): a text is encoded
    once ever, and a call with new items only runs the model on texts not seen before (items sharing
    a text share one encoding). The model is loaded only when something must be encoded: in a Ray
    Data actor pool when `pool` is given (precise.text.pool), else in this process.
    `model`: a packaged name, a local model folder or a cached Hugging Face id (precise.text.models).
    """
    spec = model_spec(model)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for item_id, text in item_texts.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"item {item_id!r} has empty or non-string text: {text!r}")

    item_ids = list(item_texts)
    keys = [text_key(item_texts[item_id]) for item_id in item_ids]
    cache = TokenCache(cache_dir or paths.cache_dir("token-embeddings"), spec.name, max_tokens, spec.dim)

    found: dict[str, np.ndarray] = {}
    todo: dict[str, str] = {}  # key -> an item id with that text (for error messages)
    for item_id, key in zip(item_ids, keys, strict=True):
        if key in found or key in todo:
            continue
        states = cache.get(key)
        if states is None:
            todo[key] = item_id
        else:
            found[key] = states
    if todo:
        found.update(_encode_and_store(todo, item_texts, cache, model, max_tokens, batch_size, progress, pool))

    out = np.zeros((len(item_ids), max_tokens, spec.dim), dtype=np.float16)
    mask = np.zeros((len(item_ids), max_tokens), dtype=bool)
    for row, key in enumerate(keys):
        states = found[key]
        out[row, : len(states)] = states
        mask[row, : len(states)] = True
    return TokenEmbeddings(item_ids, out, mask, spec.name, spec.dim, max_tokens)


def _encode_and_store(
    todo: dict[str, str],
    item_texts: Mapping[str, str],
    cache: TokenCache,
    model: str,
    max_tokens: int,
    batch_size: int,
    progress: bool,
    pool: EncodePool | None,
) -> dict[str, np.ndarray]:
    """Encode the missing texts in batches, storing each batch as soon as it is done so that an
    interrupted run keeps its progress."""
    # Similar lengths in a batch means little padding: sort by text length (a cheap proxy for tokens).
    pending = sorted(todo.items(), key=lambda kv: len(item_texts[kv[1]]))
    texts = [item_texts[item_id] for _, item_id in pending]
    batches = (_local_batches(texts, model, max_tokens, batch_size) if pool is None
               else encode_on_ray(texts, model, max_tokens, pool))
    done: dict[str, np.ndarray] = {}
    # Each cache write waits ~5 ms on fsync (disk, not CPU); a writer thread overlaps that with the
    # next batch's forward pass. One worker keeps writes in order and bounds the extra threads.
    with ThreadPoolExecutor(max_workers=1) as writer, tqdm(
        total=len(pending), desc=f"token embeddings ({model})", unit="text", disable=not progress
    ) as bar:
        writes: list[Future[None]] = []
        for rows, states, mask in batches:
            batch = [pending[row] for row in rows]
            fresh: dict[str, np.ndarray] = {}
            for (key, item_id), row_states, row_mask in zip(batch, states, mask, strict=True):
                n_tokens = int(row_mask.sum())
                if n_tokens == 0:
                    raise ValueError(f"item {item_id!r}: text {item_texts[item_id]!r} has no tokens")
                half = row_states[:n_tokens].astype(np.float16)
                if not np.isfinite(half).all():  # float16 tops out at 65504
                    raise ValueError(f"item {item_id!r}: token states overflow float16")
                fresh[key] = half
            writes.append(writer.submit(_put_all, cache, fresh))
            done.update(fresh)
            bar.update(len(batch))
        for write in writes:
            write.result()  # re-raise a failed write here rather than lose it
    return done


def _local_batches(texts: list[str], model: str, max_tokens: int, batch_size: int
                   ) -> Iterator[tuple[range, np.ndarray, np.ndarray]]:
    encoder = load_text_model(model)
    for start in range(0, len(texts), batch_size):
        rows = range(start, min(start + batch_size, len(texts)))
        yield (rows, *encoder.encode(texts[rows.start : rows.stop], max_tokens))


def _put_all(cache: TokenCache, entries: dict[str, np.ndarray]) -> None:
    for key, states in entries.items():
        cache.put(key, states)
