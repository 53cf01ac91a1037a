"""Sequences, the leave-one-out split (universal and target task) and batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from precise.data.movielens import EventDataset
from precise.train.sequences import (
    NextItemBatches,
    TargetBatches,
    build_sequences,
    item_counts,
    leave_one_out,
    right_aligned,
)


def tiny_dataset() -> EventDataset:
    # user u1 rates a..e (likes b, d, e); user u2 rates c, a, b (likes all); u3 has 2 ratings.
    rows = []
    for user, items, likes in [("u1", "abcde", "bde"), ("u2", "cab", "cab"), ("u3", "ab", "")]:
        for t, item in enumerate(items):
            rows.append((user, item, "drama", "rate", t, 4.0 if item in likes else 2.0))
            if item in likes:
                rows.append((user, item, "drama", "like", t, 4.0))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "scene", "action", "ts", "value"])
    events.insert(0, "event_id", [f"e{i}" for i in range(len(events))])
    items = pd.DataFrame({"item_id": list("abcde"), "text": list("ABCDE"), "scene": "drama", "created_ts": 0})
    return EventDataset("tiny", events, items, num_ratings=10)


def test_sequences_use_rate_events_once_and_flag_likes():
    index, seqs = build_sequences(tiny_dataset())
    assert index.item_ids == tuple("abcde")
    assert seqs.users == ("u1", "u2")  # u3 is too short for a split
    assert seqs.items[0].tolist() == [1, 2, 3, 4, 5]
    assert seqs.is_target[0].tolist() == [False, True, False, True, True]


def test_leave_one_out_universal_and_target_splits_share_the_time_cut():
    _, seqs = build_sequences(tiny_dataset())
    split = leave_one_out(seqs, max_len=4)
    assert [s.tolist() for s in split.train] == [[1, 2, 3], [3]]
    assert split.valid.targets.tolist() == [4, 1] and split.test.targets.tolist() == [5, 2]
    assert split.test.inputs.tolist() == [[1, 2, 3, 4], [0, 0, 3, 1]]
    # target task: u1 likes b, d, e -> train [b]; valid target d (history b); test e (history b, d)
    assert [s.tolist() for s in split.target_train] == [[2], [3]]
    assert split.target_valid.targets.tolist() == [4, 1]
    assert split.target_test.targets.tolist() == [5, 2]
    assert split.target_test.inputs.tolist() == [[0, 0, 2, 4], [0, 0, 3, 1]]
    assert split.target_test_universal.inputs.tolist() == split.test.inputs.tolist()


def test_right_aligned_keeps_the_most_recent_items():
    out = right_aligned([np.array([1, 2, 3, 4]), np.array([5]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_next_item_batches_shift_by_one_and_mask_the_first_item():
    batches = NextItemBatches((np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8]), np.array([9])), 3, 8)
    assert batches.num_samples == 2  # the 1-item sequence gives no pair
    (batch,) = list(batches.epoch(torch.Generator().manual_seed(0)))
    pairs = zip(batch["input_ids"].tolist(), batch["target_ids"].tolist(), strict=True)
    rows = {(tuple(x), tuple(y)) for x, y in pairs}
    assert ((0, 1, 2), (0, 2, 3)) in rows  # first real item has no predecessor: target 0
    assert ((5, 6, 7), (6, 7, 8)) in rows


def test_target_batches_cut_inside_the_sequence():
    batches = TargetBatches((np.array([1, 2, 3, 4]), np.array([5])), max_len=3, batch_size=4)
    for seed in range(5):
        (batch,) = list(batches.epoch(torch.Generator().manual_seed(seed)))
        (history,), (target,) = batch["input_ids"].tolist(), batch["target_ids"].tolist()
        real = [h for h in history if h]
        assert real == [1, 2, 3, 4][max(0, target - 1 - 3) : target - 1]  # the items before the target
        assert 2 <= target <= 4


def test_item_counts():
    assert item_counts((np.array([1, 1, 3]),), 3).tolist() == [0, 2, 0, 1]
