"""Embedding fusion (paper section IV-B): e_i = ID(i) ⊕ MoE(x_i).

x_i is item i's trainable token table row ([m, token_dim], initialised from the LLM states, see
text_adapter). The MoE has K experts, each an attention pooling over the m tokens; a gate scores
the experts from the item's mean-pooled tokens, keeps the top-k, softmaxes them (the others get
weight exactly 0) and sums the chosen experts' outputs (eqs. 3-4).

Alternate training (section IV-E): `set_tokens_trainable(False)` freezes the token table so the
ID side learns first; while frozen, the mean-pooled tokens (the gate's and the pool variant's
input) are cached instead of recomputed every step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from precise.model.config import ModelConfig


class TopKGate(nn.Module):
    """gate(x) = softmax(topk(x W_gate)): exactly k non-zero weights per item, summing to 1."""

    def __init__(self, token_dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.proj = nn.Linear(token_dim, num_experts, bias=False)
        self.top_k = top_k

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        scores = self.proj(pooled)  # [n, K]
        top, chosen = scores.topk(self.top_k, dim=-1)
        return torch.zeros_like(scores).scatter(-1, chosen, top.softmax(dim=-1))


class AttentionPoolExperts(nn.Module):
    """K experts; expert j pools the tokens with attention a_j = softmax_t(q_j · x_t / sqrt(d))
    and maps the pooled vector with its own value projection V_j. (A key projection would be
    redundant: with one learned query per expert, q_j · W_k x_t is just another vector times x_t.)"""

    def __init__(self, token_dim: int, out_dim: int, num_experts: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_experts, token_dim) / math.sqrt(token_dim))
        # Small value init: the text part starts at about the scale of the ID embedding (std 0.02),
        # so neither side of the concatenation dominates the normalised item vector at the start.
        self.value = nn.Parameter(torch.randn(num_experts, token_dim, out_dim) * 0.02 / math.sqrt(token_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [n, m, d], mask [n, m] -> expert outputs [n, K, out]."""
        scores = torch.einsum("nmd,kd->nkm", tokens, self.query) / math.sqrt(tokens.shape[-1])
        attn = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
        pooled = torch.einsum("nkm,nmd->nkd", attn, tokens)
        return torch.einsum("nkd,kde->nke", pooled, self.value)


class ItemEncoder(nn.Module):
    """Item index -> item embedding [.., width]; index 0 (padding) maps to zeros."""

    def __init__(
        self,
        config: ModelConfig,
        token_states: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        n = config.num_items + 1
        if config.uses_id:
            self.id_emb = nn.Embedding(n, config.id_dim, padding_idx=0)
            nn.init.trunc_normal_(self.id_emb.weight, std=0.02, a=-0.04, b=0.04)
            with torch.no_grad():
                self.id_emb.weight[0].zero_()
        if config.uses_text:
            if token_states is None or token_mask is None:
                raise ValueError(f"fusion {config.fusion!r} needs token states and their mask")
            if token_states.shape[0] != n or token_states.shape[-1] != config.token_dim:
                raise ValueError(
                    f"token table {tuple(token_states.shape)} does not match "
                    f"[num_items + 1 = {n}, m, token_dim = {config.token_dim}]"
                )
            self.tokens = nn.Parameter(token_states.detach().clone().float())
            self.register_buffer("token_mask", token_mask.detach().clone().bool(), persistent=True)
            if config.fusion == "pool":
                self.pool_proj = nn.Linear(config.token_dim, config.text_dim, bias=False)
                nn.init.normal_(self.pool_proj.weight, std=0.02 / math.sqrt(config.token_dim))
            else:
                self.gate = TopKGate(config.token_dim, config.num_experts, config.top_k)
                self.experts = AttentionPoolExperts(config.token_dim, config.text_dim, config.num_experts)
        self._mean_cache: tuple[int, torch.device, torch.Tensor] | None = None

    # ---- alternate training -------------------------------------------------------------
    def set_tokens_trainable(self, trainable: bool) -> None:
        """Freeze / unfreeze the token table (no-op for id_only)."""
        if not self.config.uses_text:
            return
        self.tokens.requires_grad_(trainable)
        if not trainable:
            self.tokens.grad = None  # so an optimizer step skips it entirely (no decay, no momentum)

    @property
    def tokens_trainable(self) -> bool:
        return self.config.uses_text and self.tokens.requires_grad

    def _mean_tokens(self, rows: torch.Tensor | None) -> torch.Tensor:
        """Masked mean of each item's tokens; cached for the whole table while tokens are frozen.

        The cache is keyed by the table's version counter and device, so a load_state_dict, an
        optimizer step or a .to(device) can never serve stale values.
        """
        mask = self.token_mask if rows is None else self.token_mask[rows]
        if self.tokens.requires_grad:
            tokens = self.tokens if rows is None else self.tokens[rows]
            return _masked_mean(tokens, mask)
        key = (self.tokens._version, self.tokens.device)
        if self._mean_cache is None or self._mean_cache[:2] != key:
            with torch.no_grad():
                self._mean_cache = (*key, _masked_mean(self.tokens, self.token_mask))
        cached = self._mean_cache[2]
        return cached if rows is None else cached[rows]

    # ---- forward -----------------------------------------------------------------------------
    def semantic(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """MoE(x_i) (or the pooled projection) for the given item rows (all items when None)."""
        mean = self._mean_tokens(rows)
        if self.config.fusion == "pool":
            return self.pool_proj(mean)
        tokens = self.tokens if rows is None else self.tokens[rows]
        mask = self.token_mask if rows is None else self.token_mask[rows]
        weights = self.gate(mean)  # [n, K], k non-zero
        return torch.einsum("nk,nke->ne", weights, self.experts(tokens, mask))

    def embed_new(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings [n, width] of items the table does not hold (cold start), from their token
        states already projected to `token_dim` ([n, m, token_dim], mask [n, m]): the ID part is
        zero (no collaborative signal yet), the text part runs the same MoE / pooling."""
        parts = []
        if self.config.uses_id:
            parts.append(torch.zeros(len(tokens), self.config.id_dim, dtype=tokens.dtype, device=tokens.device))
        if self.config.uses_text:
            mean = _masked_mean(tokens, mask)
            if self.config.fusion == "pool":
                parts.append(self.pool_proj(mean))
            else:
                parts.append(torch.einsum("nk,nke->ne", self.gate(mean), self.experts(tokens, mask)))
        return torch.cat(parts, dim=-1)

    def forward(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of `ids` (any shape) or, with `ids=None`, the whole table [n + 1, width].

        The text tower runs once per *distinct* item in `ids`, so a batch costs what its unique
        items cost, not what its positions cost.
        """
        if ids is None:
            parts = []
            if self.config.uses_id:
                parts.append(self.id_emb.weight)
            if self.config.uses_text:
                sem = self.semantic()
                parts.append(sem * (torch.arange(sem.shape[0], device=sem.device) > 0)[:, None])
            return torch.cat(parts, dim=-1)
        parts = []
        if self.config.uses_id:
            parts.append(self.id_emb(ids))
        if self.config.uses_text:
            unique, inverse = torch.unique(ids, return_inverse=True)
            sem = self.semantic(unique)[inverse]
            parts.append(sem * (ids > 0).unsqueeze(-1))
        return torch.cat(parts, dim=-1)


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


__all__ = ["AttentionPoolExperts", "ItemEncoder", "TopKGate", "l2_normalize"]
