"""Encoding item text in a Ray Data actor pool (on GPUs when the cluster has them), not in the caller.

`item_token_embeddings(..., pool=EncodePool(...))` sends the texts that are not cached yet through
`map_batches` with `TextEncodeActor`: each actor loads the model once (precise.text.models, offline)
and encodes batches; the caller only writes what comes back into its token cache. Without a pool
(no Ray, or inside a worker that is itself an actor, like an embedding actor) the caller encodes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EncodePool:
    """The actor pool's shape (`training.text.encode_*`)."""

    actors: int = 1  # pool size (Ray Data ActorPoolStrategy)
    batch_size: int = 32  # texts per model call
    num_cpus: float = 1.0  # per actor (also its torch threads, rounded down, at least 1)
    num_gpus: float | None = None  # per actor; None: 1 when the Ray cluster has a GPU, else 0

    def gpus(self) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        import ray

        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


class TextEncodeActor:
    """A Ray Data actor: loads the text model once, then maps batches of texts to token states."""

    def __init__(self, model: str, max_tokens: int, threads: int = 1) -> None:
        import torch

        from precise.text.models import load_text_model

        torch.set_num_threads(max(1, threads))
        self.encoder = load_text_model(model)
        self.max_tokens = max_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states, mask = self.encoder.encode([str(t) for t in batch["text"]], self.max_tokens)
        return {"row": batch["row"], "states": states.astype(np.float16), "mask": mask}


def encode_on_ray(texts: Sequence[str], model: str, max_tokens: int, pool: EncodePool
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows of `texts`, float16 states [b, max_tokens, dim], mask [b, max_tokens]) per encoded batch,
    as the actors finish them (any order)."""
    import ray

    ds = ray.data.from_items([{"row": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(TextEncodeActor, batch_format="numpy", batch_size=pool.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.num_cpus,
                        num_gpus=pool.gpus(),
                        fn_constructor_kwargs={"model": model, "max_tokens": max_tokens,
                                               "threads": int(pool.num_cpus)})
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield np.asarray(batch["row"]), np.asarray(batch["states"]), np.asarray(batch["mask"], dtype=bool)


def pool_of(options: Any) -> EncodePool:
    """The pool of a `training.text` config section."""
    return EncodePool(actors=options.encode_actors, batch_size=options.encode_batch_size,
                      num_cpus=options.encode_num_cpus, num_gpus=options.encode_num_gpus)
