"""Losses: sampled softmax for next-item prediction (paper eq. 5), its exact full-softmax form, and
BPR over users (eq. 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A sampled negative that happens to be the positive is no negative: its logit is pushed out
# of the softmax (a large negative finite value, so bf16/fp16 stay finite).
_HIT = -5e4


def sampled_softmax_loss(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, pos_ids: torch.Tensor, neg_ids: torch.Tensor
) -> torch.Tensor:
    """Mean of -log softmax([pos, negs])[0] over rows.

    pos_logits [P], neg_logits [P, R], pos_ids [P], neg_ids [P, R] or [R] (shared by all rows).
    """
    hits = neg_ids == pos_ids[:, None] if neg_ids.dim() == 2 else neg_ids[None, :] == pos_ids[:, None]
    neg_logits = neg_logits.masked_fill(hits, _HIT)
    logits = torch.cat([pos_logits[:, None], neg_logits], dim=1).float()
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def full_softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `targets` [P] over every item: logits [P, n + 1], column 0 (padding) excluded."""
    logits = logits.float()
    logits[:, 0] = _HIT
    return F.cross_entropy(logits, targets)


def bpr_user_loss(scores: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """Paper eq. 6 with -log sigmoid: for each sample's next item, its own user should score
    higher than every other user of the batch.

    scores [B, B]: scores[u, v] = user u . item of sample v; item_ids [B]. Pairs whose two samples
    share the next item are skipped (the "other" user did interact with it too).
    """
    diff = scores.diagonal()[None, :] - scores  # [u', v]: true user of v minus user u'
    pairs = item_ids[None, :] != item_ids[:, None]  # also drops u' == v
    if not pairs.any():
        return scores.sum() * 0.0
    return -F.logsigmoid(diff[pairs].float()).mean()
