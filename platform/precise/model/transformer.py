"""The sequence Transformer shared by universal (causal) and targeted (bidirectional) training.

Blocks follow the SASRec block of the HSTU repository's SASRec baseline (the configuration whose
ML-1M numbers we compare against): queries are layer-normed, keys and values are not; the FFN
(ReLU) acts on layer-norm(query + attention) with its own residual; padded positions are zeroed
after every block. Inputs are item embeddings * sqrt(width) + a learned positional embedding,
then dropout.

Sequences are right-aligned (padding on the left), so the positional embedding is indexed by
recency (0 = the most recent item): a targeted model with a shorter window reuses the first rows
of a universal model's table with the same meaning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from precise.model.config import ModelConfig


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.heads = heads
        self.dropout = dropout

    def forward(self, query: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """query/keys [B, N, W]; allowed [B, 1, N, N] bool (True = may attend)."""
        b, n, w = query.shape
        h = self.heads
        q = self.q(query).view(b, n, h, w // h).transpose(1, 2)
        k, v = self.kv(keys).view(b, n, 2, h, w // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.ln_query = nn.LayerNorm(width, eps=1e-8)
        self.attn = SelfAttention(width, heads, attn_dropout)
        self.ln_ffn = nn.LayerNorm(width, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        q = self.ln_query(x)
        h = self.ln_ffn(q + self.attn(q, x, allowed))
        return (h + self.ffn(h)) * valid


class SequenceEncoder(nn.Module):
    """Item embeddings [B, N, W] of a right-aligned sequence -> contextual outputs [B, N, W]."""

    def __init__(self, config: ModelConfig, causal: bool) -> None:
        super().__init__()
        width = config.width
        self.causal = causal
        self.width = width
        self.pos_emb = nn.Embedding(config.max_len, width)
        nn.init.trunc_normal_(self.pos_emb.weight, std=math.sqrt(1.0 / width))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(width, config.num_heads, config.ffn_width, config.dropout, config.attn_dropout_rate)
            for _ in range(config.num_layers)
        )
        # As in HSTU's SASRec: Xavier-normal for the blocks' matrices.
        for name, param in self.blocks.named_parameters():
            if param.dim() == 2:
                nn.init.xavier_normal_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, 1, N, N]: attend to real items (and, if causal, only earlier ones). The diagonal
        is always allowed so a padding row never has an empty softmax (its output is zeroed)."""
        n = valid.shape[1]
        allowed = valid[:, None, None, :].expand(-1, 1, n, n)
        eye = torch.eye(n, dtype=torch.bool, device=valid.device)
        if self.causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
        return allowed | eye

    def forward(self, item_emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n = item_emb.shape[1]
        if n > self.pos_emb.num_embeddings:
            raise ValueError(f"sequence of {n} positions exceeds max_len {self.pos_emb.num_embeddings}")
        recency = self.pos_emb.weight[:n].flip(0)  # column j has recency n - 1 - j
        mask = valid.unsqueeze(-1).to(item_emb.dtype)
        x = self.dropout(item_emb * math.sqrt(self.width) + recency) * mask
        allowed = self.attention_mask(valid)
        for block in self.blocks:
            x = block(x, allowed, mask)
        return x
