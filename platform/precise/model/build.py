"""Build a model from its config (and, for text variants, the token table)."""

from __future__ import annotations

import numpy as np
import torch

from precise.model.config import ModelConfig
from precise.model.targeted import TargetedModel
from precise.model.universal import UniversalModel

MODEL_KINDS = {"universal": UniversalModel, "targeted": TargetedModel}


def build_model(
    config: ModelConfig,
    kind: str = "universal",
    token_table: tuple[np.ndarray, np.ndarray] | None = None,
) -> UniversalModel | TargetedModel:
    """`kind`: "universal" (causal, next-item) or "targeted" (bidirectional + MLP, BPR).

    `token_table` = (states [n + 1, m, token_dim], mask [n + 1, m]) from
    `precise.model.text_adapter.token_table`; needed unless `config.fusion == "id"`.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    states = mask = None
    if config.uses_text:
        if token_table is None:
            raise ValueError(f"fusion {config.fusion!r} needs a token table")
        # Copies: arrays from Ray's object store are read-only, and the model trains the table.
        states, mask = torch.from_numpy(np.array(token_table[0])), torch.from_numpy(np.array(token_table[1]))
    return MODEL_KINDS[kind](config, states, mask)
