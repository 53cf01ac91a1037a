"""What the universal and the targeted model share: the item tower and the Transformer over a
sequence of item embeddings (the parameter names `items.*` and `encoder.*` that warm starts copy)."""

from __future__ import annotations

import torch
from torch import nn

from precise.model.config import PAD, ModelConfig
from precise.model.fusion import ItemEncoder, l2_normalize
from precise.model.transformer import SequenceEncoder


class SequenceModel(nn.Module):
    causal: bool  # the universal model reads causally, the targeted one bidirectionally

    def __init__(
        self,
        config: ModelConfig,
        token_states: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.items = ItemEncoder(config, token_states, token_mask)
        self.encoder = SequenceEncoder(config, causal=self.causal)

    def encode(self, input_ids: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs at every position [B, N, W] (not normalised). `table`: precomputed item table."""
        emb = self.items(input_ids) if table is None else table[input_ids]
        return self.encoder(emb, input_ids != PAD)

    def item_embeddings(self) -> torch.Tensor:
        """L2-normalised item table [n + 1, W] (row 0 = padding)."""
        return l2_normalize(self.items())
