"""Targeted training model (paper section IV-D): the universal model's blocks without the causal
mask, user embedding = MLP(concat of all positions' outputs), BPR loss ranking the true user above
the other users of the batch for the next item (eq. 6; `target_loss: users`). Eq. 6 compares users
for one fixed item, so any per-item offset cancels from it: it cannot learn or keep item
popularity or a scene prior. `target_loss: items` ranks the next item above other items for the
same user instead (sampled or full softmax), `both` adds the two. Warm-started from a universal checkpoint:
every parameter the two share (item encoder incl. token table and MoE, positional embedding,
blocks) is copied; only the MLP head starts fresh.

`head_residual` (default on) adds the most recent position's output to the MLP's and starts the
MLP's last layer at zero. A randomly initialised head would map the warm-started encoder's outputs
to a random user vector and throw the universal model's user tower away on step one; with the
residual, targeted training starts from the universal user embedding (computed bidirectionally)
and the MLP learns what the other positions add. `head_residual: false` is the plain MLP.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from precise.model.base import SequenceModel
from precise.model.config import PAD, ModelConfig
from precise.model.fusion import l2_normalize
from precise.model.losses import bpr_user_loss, full_softmax_loss, sampled_softmax_loss


class TargetedModel(SequenceModel):
    causal = False

    def __init__(
        self,
        config: ModelConfig,
        token_states: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__(config, token_states, token_mask)
        width, hidden = config.width, config.head_hidden or 2 * config.width
        self.head = nn.Sequential(
            nn.Linear(config.max_len * width, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, width),
        )
        if config.head_residual:
            # The head's output starts at zero, so user = most recent position's output at first:
            # a warm-started model begins from the universal user embedding, not a random one.
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def user_embeddings(self, input_ids: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised MLP(concat(h_1..h_N)) [B, W]; inputs are left-padded to max_len so each
        slot of the concatenation always holds the same recency."""
        max_len = self.config.max_len
        if input_ids.shape[1] < max_len:
            input_ids = nn.functional.pad(input_ids, (max_len - input_ids.shape[1], 0), value=PAD)
        elif input_ids.shape[1] > max_len:
            input_ids = input_ids[:, -max_len:]
        h = self.encode(input_ids, table)
        user = self.head(h.flatten(1))
        if self.config.head_residual:
            user = user + h[:, -1]
        return l2_normalize(user)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        target = batch["target_ids"]
        users = self.user_embeddings(batch["input_ids"])  # [B, W]
        total = users.new_zeros(())
        if cfg.target_loss in ("users", "both"):
            items = l2_normalize(self.items(target))  # [B, W]
            total = total + bpr_user_loss(users @ items.T / cfg.temperature, target)
        if cfg.target_loss in ("items", "both"):
            weight = cfg.items_weight if cfg.target_loss == "both" else 1.0
            total = total + weight * self._items_loss(users / cfg.temperature, target)
        return total

    def _items_loss(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The next item against other items for the same user (it keeps what eq. 6 cannot: item
        popularity and scene priors), over every item or `num_negatives` uniform ones per sample
        (uniform: no logQ correction is needed)."""
        cfg = self.config
        if cfg.full_softmax:
            return full_softmax_loss(query @ l2_normalize(self.items()).T, target)
        neg_ids = torch.randint(1, cfg.num_items + 1, (len(target), cfg.num_negatives), device=target.device)
        vectors = l2_normalize(self.items(torch.cat([target, neg_ids.flatten()])))
        pos, neg = vectors.split([len(target), neg_ids.numel()])
        pos_logits = (query * pos).sum(-1)
        neg_logits = torch.einsum("bw,brw->br", query, neg.view(len(target), cfg.num_negatives, -1))
        return sampled_softmax_loss(pos_logits, neg_logits, target, neg_ids)

    def warm_start(self, universal_state: Mapping[str, torch.Tensor]) -> list[str]:
        """Copy every shared parameter/buffer from a universal model's state dict.

        Shapes must agree except the positional table, whose first `max_len` rows (the most recent
        positions) are taken when the universal window is longer. Returns the copied names; a
        shared name with an incompatible shape is an error, never silently skipped.
        """
        own = self.state_dict()
        copied = []
        with torch.no_grad():
            for name, value in universal_state.items():
                if name not in own:
                    continue
                target = own[name]
                if name == "encoder.pos_emb.weight" and value.shape[0] >= target.shape[0]:
                    value = value[: target.shape[0]]
                if value.shape != target.shape:
                    raise ValueError(
                        f"cannot warm-start {name}: {tuple(value.shape)} vs {tuple(target.shape)}"
                    )
                target.copy_(value)
                copied.append(name)
        return copied
