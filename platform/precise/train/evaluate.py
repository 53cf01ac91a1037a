"""Offline evaluation: leave-one-out, full ranking over every item, Recall@K and NDCG@K.

Protocol (paper section V, HSTU/SASRec ML-1M setup):
* every catalogue item is a candidate; only padding (index 0) is excluded. History items are NOT
  removed from the ranking in the headline numbers (`all`, `cold`).
* `history_masked` additionally reports the ranking with the user's input items removed (except
  the target), because the HSTU repository's evaluation does that by default
  (`eval_metrics_v2_from_tensors(filter_invalid_ids=True)` over the input window): compare
  against its published numbers with these.
* one relevant item per user, so Recall@K = HR@K = 1[rank <= K] and NDCG@K = 1/log2(rank + 1).
* ties are broken against the target (rank = 1 + #items scoring >= the target, itself excluded).
* cold items: the 80% least popular items by training interactions (paper section V-B); items with
  no training interaction are neither hot nor cold (the paper leaves new items out of this subset).
* batched over users: memory is O(batch_users x items).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from precise.model.config import PAD
from precise.model.fusion import l2_normalize
from precise.train.data import EvalSet

DEFAULT_KS = (10, 30, 50)


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each target among all candidates (column 0 = padding is never a candidate).

    scores [B, n + 1], targets [B]; exclude [B, L] item indices to drop from the candidates
    (0 entries and the target itself are ignored).
    """
    target_score = scores.gather(1, targets[:, None])
    ahead = scores >= target_score
    ahead[:, PAD] = False
    ahead.scatter_(1, targets[:, None], False)
    if exclude is not None:
        drop = torch.zeros_like(ahead)
        drop.scatter_(1, exclude, True)
        drop[:, PAD] = False
        drop.scatter_(1, targets[:, None], False)
        ahead &= ~drop
    return ahead.sum(dim=1) + 1


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{"R@K": mean 1[rank <= K], "N@K": mean 1[rank <= K] / log2(rank + 1)} (0.0 when empty)."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float((ranks <= k).double().mean()) if len(ranks) else 0.0
    for k in ks:
        gain = torch.where(ranks <= k, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
        out[f"N@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


def cold_items(train_counts: np.ndarray, hot_fraction: float = 0.2) -> np.ndarray:
    """bool [n + 1]: items outside the top `hot_fraction` by training count (count >= 1 only)."""
    seen = np.flatnonzero(train_counts > 0)
    seen = seen[seen != PAD]
    order = seen[np.argsort(-train_counts[seen], kind="stable")]
    n_hot = math.ceil(hot_fraction * len(order))
    cold = np.zeros(len(train_counts), dtype=bool)
    cold[order[n_hot:]] = True
    return cold


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]  # all evaluated users
    cold: dict[str, float]  # users whose target is a cold item
    history_masked: dict[str, float]  # all users, input items removed from the candidates
    users: int
    cold_users: int

    def as_dict(self) -> dict[str, object]:
        return {
            **self.metrics,
            "cold": {**self.cold, "users": self.cold_users},
            "history_masked": self.history_masked,
            "users": self.users,
        }


Scorer = Callable[[torch.Tensor], torch.Tensor]  # input_ids [b, N] -> scores [b, n + 1]


def evaluate_scorer(
    scorer: Scorer,
    data: EvalSet,
    cold: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 512,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Rank every target with `scorer` in batches of users and aggregate the metrics."""
    ranks, masked = [], []
    inputs = torch.from_numpy(data.inputs)
    targets = torch.from_numpy(data.targets)
    for start in range(0, len(targets), batch_users):
        x = inputs[start : start + batch_users].to(device)
        t = targets[start : start + batch_users].to(device)
        scores = scorer(x).float()
        ranks.append(target_ranks(scores, t).cpu())
        masked.append(target_ranks(scores, t, exclude=x).cpu())
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    all_masked = torch.cat(masked) if masked else torch.zeros(0, dtype=torch.long)
    is_cold = (
        torch.from_numpy(cold[data.targets])
        if cold is not None
        else torch.zeros(len(targets), dtype=torch.bool)
    )
    return EvalResult(
        metrics=metrics_from_ranks(all_ranks, ks),
        cold=metrics_from_ranks(all_ranks[is_cold], ks),
        history_masked=metrics_from_ranks(all_masked, ks),
        users=len(all_ranks),
        cold_users=int(is_cold.sum()),
    )


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: EvalSet,
    cold: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 512,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Full-ranking evaluation of a UniversalModel / TargetedModel (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    try:
        raw_table = model.items()  # the item tower runs once for all users
        items = l2_normalize(raw_table)

        def scorer(x: torch.Tensor) -> torch.Tensor:
            return model.user_embeddings(x, raw_table) @ items.T

        return evaluate_scorer(scorer, data, cold, ks, batch_users, device)
    finally:
        model.train(was_training)


def popularity_scorer(train_counts: np.ndarray, device: torch.device | str = "cpu") -> Scorer:
    """Baseline: every user gets the items ranked by training popularity."""
    counts = torch.as_tensor(train_counts, dtype=torch.float32, device=device)

    def scorer(x: torch.Tensor) -> torch.Tensor:
        return counts.expand(len(x), -1)

    return scorer
