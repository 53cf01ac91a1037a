"""Encode speed of the packaged text models on MovieLens-100k item texts (1,682 items).

    PYTHONPATH=platform python benchmarks/text_encode.py [--models minilm smollm2] [--threads 2] [--limit N]

Each model encodes into a fresh temporary cache (cold), then reads everything back (warm). Model
load time is reported apart from encoding because it is paid once per process. Items per CPU-second
(all threads summed) is the figure to compare on a shared machine, where wall time depends on load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from precise.data import load_movielens
from precise.text import item_token_embeddings, load_text_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    items = load_movielens("ml-100k").items
    texts = dict(list(zip(items.item_id, items.text, strict=True))[: args.limit])
    print(f"{len(texts)} items, {len(set(texts.values()))} distinct texts, torch threads={args.threads}")
    for model in args.models:
        start = time.perf_counter()
        load_text_model(model)
        load_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu_start = time.perf_counter(), time.process_time()
            emb = item_token_embeddings(texts, model, args.max_tokens, Path(tmp), args.batch_size, False)
            cold_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
            start = time.perf_counter()
            item_token_embeddings(texts, model, args.max_tokens, Path(tmp), args.batch_size, False)
            warm_s = time.perf_counter() - start
        tokens = emb.mask.sum(axis=1)
        print(
            f"{model}: load {load_s:.1f}s | encode {len(texts) / cold_s:.0f} items/s ({cold_s:.1f}s), "
            f"{len(texts) / cpu_s:.0f} items per CPU-second | cache hit {len(texts) / warm_s:.0f} items/s "
            f"({warm_s:.2f}s) | tokens/item mean {tokens.mean():.1f} max {tokens.max()} "
            f"(m={args.max_tokens}) | states {emb.states.shape} {emb.states.dtype} "
            f"{emb.states.nbytes / 2**20:.0f} MiB | max |x| {np.abs(emb.states.astype(np.float32)).max():.1f}"
        )


if __name__ == "__main__":
    main()
