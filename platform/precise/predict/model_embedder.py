"""The trained PRECISE model behind the serving `Embedder` protocol.

Loads one registry version (weights, item vocabulary, the fixed text projection) and answers:
item vectors for known items from the trained item tower; for a new item known only by its text,
the text half of the tower on its LLM token states (projected with the version's own
projection) and a zero ID half — the cold-start path; user vectors from the user's sequence
(universal: the last position; targeted: the MLP over all positions).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_arrays

from precise.model import ModelConfig, build_model
from precise.model.inputs import right_aligned
from precise.model.text_adapter import TokenProjection, load_token_states
from precise.store.registry import ITEMS_FILE, PROJECTION_FILE, ModelRegistry, RegistryError


class RegistryEmbedder:
    def __init__(self, root: str | None = None, kind: str = "targeted", task: str | None = "like",
                 version: str | None = None) -> None:
        from precise.paths import precise_home

        registry = ModelRegistry(root or str(precise_home()))  # default: the platform's storage root
        task = task if kind == "targeted" else None
        model = registry.get(kind, version, task) if version else registry.latest(kind, task)
        if model is None:
            raise RegistryError(f"no {kind} model{' for task ' + task if task else ''} in {registry.root}")
        self.model_version = model.ref
        items = json.loads(registry.read_file(model, ITEMS_FILE))
        self.lookup = {item: i + 1 for i, item in enumerate(items)}
        config = ModelConfig(**model.metadata["model_config"])
        state = registry.load_state_dict(model)
        table = None
        if config.uses_text:
            table = (state["items.tokens"].numpy(), state["items.token_mask"].numpy())
            self.projection = TokenProjection.from_arrays(load_arrays(registry.read_file(model, PROJECTION_FILE)))
            text = model.metadata["config"]["training"]["text"]
            self.text_model, self.max_tokens = text["model"], int(text["max_tokens"])
        self.model = build_model(config, kind, token_table=table)
        self.model.load_state_dict(state)
        self.model.eval()
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

    def describe(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "items": len(self.lookup), "dim": int(self.raw_table.shape[1])}
