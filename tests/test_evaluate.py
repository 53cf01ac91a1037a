"""Ranking metrics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precise.train.data import EvalSet
from precise.train.evaluate import (
    cold_items,
    evaluate_scorer,
    metrics_from_ranks,
    popularity_scorer,
    target_ranks,
)


def test_target_ranks_full_ranking_excludes_only_padding():
    # columns: 0 = padding (huge score, must not count), items 1..5
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.9, 0.2], [9.0, 0.4, 0.3, 0.2, 0.1, 0.0]])
    targets = torch.tensor([3, 1])
    # row 0: items scoring above 0.3 are 2 (0.5) and 4 (0.9) -> rank 3; row 1: best -> rank 1
    assert target_ranks(scores, targets).tolist() == [3, 1]


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.1]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]


def test_history_exclusion_removes_inputs_but_never_the_target():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    history = torch.tensor([[0, 1, 4, 3]])  # padding, an item above, one below, the target itself
    assert target_ranks(scores, torch.tensor([3])).tolist() == [3]
    # item 1 is dropped, item 2 (not in the history) stays ahead, the target is never dropped
    assert target_ranks(scores, torch.tensor([3]), exclude=history).tolist() == [2]


def test_metrics_from_ranks_by_hand():
    ranks = torch.tensor([1, 3, 12, 40, 100])
    m = metrics_from_ranks(ranks, ks=(10, 30, 50))
    assert m["R@10"] == pytest.approx(2 / 5)
    assert m["R@30"] == pytest.approx(3 / 5)
    assert m["R@50"] == pytest.approx(4 / 5)
    assert m["N@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 5)
    assert m["N@30"] == pytest.approx((1 + 0.5 + 1 / math.log2(13)) / 5)
    assert m["N@50"] == pytest.approx((1 + 0.5 + 1 / math.log2(13) + 1 / math.log2(41)) / 5)
    assert metrics_from_ranks(torch.zeros(0), ks=(10,)) == {"R@10": 0.0, "N@10": 0.0}


def test_cold_items_are_the_80_percent_least_popular_seen_items():
    counts = np.array([0, 50, 40, 30, 20, 10, 9, 8, 7, 6, 5, 0])  # index 0 padding, item 11 unseen
    cold = cold_items(counts, hot_fraction=0.2)
    assert not cold[0] and not cold[11]  # padding and never-trained items are not "cold"
    assert cold.tolist()[1:11] == [False, False] + [True] * 8  # top 20% of 10 seen items is hot


def test_evaluate_scorer_popularity_end_to_end():
    counts = np.array([0, 5, 4, 3, 2, 1])
    data = EvalSet(
        users=("a", "b", "c"), inputs=np.array([[0, 1], [2, 3], [0, 4]]), targets=np.array([1, 4, 2])
    )
    result = evaluate_scorer(
        popularity_scorer(counts), data, cold=cold_items(counts), ks=(1, 3), batch_users=2
    )
    # ranks: item1 -> 1, item4 -> 4, item2 -> 2; history-masked: user b drops items 2,3 -> rank 2;
    # user c drops item 4 (not above item 2) -> 2; user a drops item 1 == target -> 1
    assert result.metrics["R@1"] == pytest.approx(1 / 3)
    assert result.metrics["R@3"] == pytest.approx(2 / 3)
    assert result.history_masked["R@3"] == pytest.approx(1.0)
    assert result.cold_users == 2 and result.users == 3  # items 4 and 2 are cold (item 1 is hot)
    assert result.cold["R@3"] == pytest.approx(1 / 2)
