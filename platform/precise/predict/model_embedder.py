"""The trained PRECISE model behind the serving `Embedder` protocol.

Loads one registry version (weights, item vocabulary, the fixed text projection; by default the
LATEST, but a snapshot always names the exact version, `pinned`) and answers:
item vectors for known items from the trained item tower; for a new item known only by its text,
the text half of the tower on its LLM token states (projected with the version's own
projection) and a zero ID half — the cold-start path; user vectors from the user's sequence
(universal: the last position; targeted: the MLP over all positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from precise.model.inputs import right_aligned
from precise.model.text_adapter import TokenProjection, load_token_states
from precise.store.registry import ModelRegistry, ModelVersion, RegistryError, load_model


class RegistryEmbedder:
    def __init__(self, root: str | None = None, kind: str = "targeted", task: str | None = "like",
                 version: str | None = None) -> None:
        spec, version = pinned({"root": root, "kind": kind, "task": task, "version": version})
        loaded = load_model(ModelRegistry(spec["root"]), version)
        self.model_version = version.ref
        self.lookup = loaded.lookup
        # which sequences the model reads for a user: its training family, its window
        self.sequence_rules = sequence_rules(version)
        self.model = loaded.model
        config = self.model.config
        if config.uses_text:
            self.projection = TokenProjection.from_arrays(loaded.projection)
            text = version.metadata.get("text") or version.metadata["config"]["training"]["text"]
            self.text_model, self.max_tokens = text["model"], int(text["max_tokens"])
        self.max_len = config.max_len
        with torch.no_grad():
            self.raw_table = self.model.items()  # [n + 1, width], row 0 = padding

    def _cold(self, texts: list[str]) -> torch.Tensor:
        if not hasattr(self, "projection"):
            raise KeyError("this model has no text tower: new items need an id it was trained on")
        keyed = {f"cold:{i}": t for i, t in enumerate(texts)}
        states = load_token_states(keyed, self.text_model, self.max_tokens, progress=False)
        tokens = self.projection.apply(np.asarray(states.states, dtype=np.float32)) * states.mask[..., None]
        with torch.no_grad():
            return self.model.items.embed_new(torch.from_numpy(tokens.astype(np.float32)),
                                              torch.from_numpy(np.asarray(states.mask)))

    def embed_items(self, item_ids: list[str], texts: list[str] | None) -> np.ndarray:
        out = np.zeros((len(item_ids), self.raw_table.shape[1]), dtype=np.float32)
        cold_rows, cold_texts = [], []
        for row, item in enumerate(item_ids):
            index = self.lookup.get(item)
            if index is not None:
                out[row] = self.raw_table[index].numpy()
            elif texts is not None and texts[row]:
                cold_rows.append(row)
                cold_texts.append(texts[row])
            else:
                raise KeyError(f"unknown item {item!r} and no text to embed it from")
        if cold_rows:
            out[cold_rows] = self._cold(cold_texts).numpy()
        return out

    def embed_user_sequence(self, item_ids: list[str]) -> np.ndarray:
        known = np.array([self.lookup[i] for i in item_ids if i in self.lookup], dtype=np.int64)
        if len(known) == 0:
            raise KeyError("no item of the sequence is known to the model")
        with torch.no_grad():
            user = self.model.user_embeddings(torch.from_numpy(right_aligned([known], self.max_len)), self.raw_table)
        return user[0].numpy().astype(np.float32)

    def embed_user_sequences(self, sequences: list[list[str]]) -> np.ndarray:
        """[n, d]: `embed_user_sequence` of each sequence in one forward pass (real-time serving
        batches the users whose vectors went stale together)."""
        known = [np.array([self.lookup[i] for i in seq if i in self.lookup], dtype=np.int64) for seq in sequences]
        if any(len(k) == 0 for k in known):
            raise KeyError("a sequence has no item known to the model")
        with torch.no_grad():
            users = self.model.user_embeddings(torch.from_numpy(right_aligned(known, self.max_len)), self.raw_table)
        return users.numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "items": len(self.lookup), "dim": int(self.raw_table.shape[1])}


def sequence_rules(model: ModelVersion) -> dict[str, Any]:
    """The sequences a model version embeds users from (recorded at registration)."""
    rules = model.metadata.get("sequence_rules")
    if not rules:
        raise RegistryError(f"{model.ref} records no sequence rules (registered by an older version of the "
                            f"platform): retrain it")
    return rules


def pinned(kwargs: dict[str, Any]) -> tuple[dict[str, Any], ModelVersion]:
    """`RegistryEmbedder` kwargs naming one exact version (LATEST resolved now), and that version:
    every embedding actor of a prediction job, and every replica that serves its snapshot, then
    loads the same model, whatever is registered meanwhile."""
    from precise.paths import precise_home

    kind = kwargs.get("kind", "targeted")
    task = kwargs.get("task", "like") if kind == "targeted" else None
    registry = ModelRegistry(kwargs.get("root") or str(precise_home()))
    version = kwargs.get("version")
    model = registry.get(kind, version, task) if version else registry.latest(kind, task)
    if model is None:
        raise RegistryError(f"no {kind} model{' for task ' + task if task else ''} in {registry.root}")
    return {**kwargs, "root": str(registry.files.uri), "kind": kind, "task": task, "version": model.version}, model
