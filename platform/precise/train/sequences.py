"""User sequences, the leave-one-out split and the batches the models train on.

Layout: item ids become dense indices 1..n (0 is padding). Every batch is *right-aligned*: the
most recent item sits in the last column and padding fills the left, as in the original SASRec.
That keeps "user embedding = output at the last position" a plain `[:, -1]`, lets the positional
embedding mean "recency", and gives the targeted model's MLP-over-all-positions a fixed meaning
per column whatever the sequence length.

Split (per user, on the all-scene sequence S_u in event-time order):
  train = S_u[:-2]; validation: input S_u[:-2] -> target S_u[-2]; test: input S_u[:-1] -> S_u[-1].
The target task (targeted training) uses the same per-user time cut, so universal and targeted
training see exactly the same past and nothing of a held-out event leaks through the warm start:
its training sequences are the target events among S_u[:-2]; a user is evaluated on the target
task when the held-out event (S_u[-2] for validation, S_u[-1] for test) is itself a target event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from precise.data.movielens import EventDataset
from precise.model.config import PAD
from precise.model.inputs import right_aligned


@dataclass(frozen=True)
class ItemIndex:
    """Dense item indices: `item_ids[i - 1]` has index i; 0 is padding."""

    item_ids: tuple[str, ...]

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def lookup(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}


@dataclass(frozen=True)
class UserSequences:
    """Per user, item indices in event-time order and whether each event is a target event."""

    users: tuple[str, ...]
    items: tuple[np.ndarray, ...]
    is_target: tuple[np.ndarray, ...]


def build_sequences(
    dataset: EventDataset,
    action: str = "rate",
    target_action: str | None = "like",
    target_scene: str | None = None,
    min_length: int = 3,
) -> tuple[ItemIndex, UserSequences]:
    """All-scene sequences from the `action` events, with target flags.

    On MovieLens every rating is a `rate` event and a rating >= 4 is also a `like` event with the
    same (user, item, ts): we train on the `rate` events only (counting likes too would show each
    liked movie twice) and mark a rate event as a target event when its like twin exists
    (`target_action`) and/or its scene equals `target_scene`. Users with fewer than `min_length`
    events cannot give a train/validation/test split and are dropped.
    """
    events = dataset.events
    seq = events[events["action"] == action]
    if seq.empty:
        raise ValueError(f"dataset {dataset.name} has no {action!r} events")
    flags = np.ones(len(seq), dtype=bool)
    if target_action is not None:
        twins = events.loc[events["action"] == target_action, ["user_id", "item_id", "ts"]]
        key = pd.MultiIndex.from_frame(seq[["user_id", "item_id", "ts"]])
        flags &= key.isin(pd.MultiIndex.from_frame(twins))
    if target_scene is not None:
        flags &= (seq["scene"] == target_scene).to_numpy()

    # Items in catalogue order (first appearance), so indices are stable for a given dataset.
    item_ids = tuple(dataset.items["item_id"].tolist())
    index = ItemIndex(item_ids)
    codes = seq["item_id"].map(index.lookup())
    if codes.isna().any():
        missing = seq.loc[codes.isna(), "item_id"].iloc[0]
        raise ValueError(f"event item {missing!r} is not in the catalogue")
    frame = pd.DataFrame({"user": seq["user_id"].to_numpy(), "item": codes.to_numpy(np.int64), "flag": flags})
    users, items, targets = [], [], []
    # groupby keeps the (event-time) row order inside each group.
    for user, group in frame.groupby("user", sort=True):
        if len(group) < min_length:
            continue
        users.append(str(user))
        items.append(group["item"].to_numpy(np.int64))
        targets.append(group["flag"].to_numpy(bool))
    return index, UserSequences(tuple(users), tuple(items), tuple(targets))


@dataclass(frozen=True)
class EvalSet:
    """Inputs (right-aligned, last `max_len`) and the held-out next item for each evaluated user."""

    users: tuple[str, ...]
    inputs: np.ndarray  # [U, max_len] int64
    targets: np.ndarray  # [U] int64

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Split:
    """Leave-one-out split of the universal task and of the target task."""

    train: tuple[np.ndarray, ...]  # all-scene training sequences S_u[:-2]
    valid: EvalSet
    test: EvalSet
    target_train: tuple[np.ndarray, ...]  # target events among S_u[:-2]
    target_valid: EvalSet
    target_test: EvalSet
    target_test_universal: EvalSet  # same users/targets as target_test, all-scene input S_u[:-1]


def _eval_set(users: list[str], inputs: list[np.ndarray], targets: list[int], max_len: int) -> EvalSet:
    return EvalSet(tuple(users), right_aligned(inputs, max_len), np.asarray(targets, dtype=np.int64))


def leave_one_out(seqs: UserSequences, max_len: int, target_max_len: int | None = None) -> Split:
    """Split every user's sequence: last item test, second-to-last validation, the rest training."""
    target_max_len = target_max_len or max_len
    train, target_train = [], []
    ev: dict[str, tuple[list, list, list]] = {
        k: ([], [], []) for k in ("valid", "test", "t_valid", "t_test", "t_test_u")
    }

    def add(key: str, user: str, history: np.ndarray, target: int) -> None:
        ev[key][0].append(user)
        ev[key][1].append(history)
        ev[key][2].append(int(target))

    for user, items, flags in zip(seqs.users, seqs.items, seqs.is_target, strict=True):
        train.append(items[:-2])
        add("valid", user, items[:-2], items[-2])
        add("test", user, items[:-1], items[-1])
        target_train.append(items[:-2][flags[:-2]])
        # A target-task case needs a target event held out and at least one target event before it.
        if flags[-2] and flags[:-2].any():
            add("t_valid", user, items[:-2][flags[:-2]], items[-2])
        if flags[-1] and flags[:-1].any():
            add("t_test", user, items[:-1][flags[:-1]], items[-1])
            add("t_test_u", user, items[:-1], items[-1])
    return Split(
        train=tuple(train),
        valid=_eval_set(*ev["valid"], max_len),
        test=_eval_set(*ev["test"], max_len),
        target_train=tuple(target_train),
        target_valid=_eval_set(*ev["t_valid"], target_max_len),
        target_test=_eval_set(*ev["t_test"], target_max_len),
        target_test_universal=_eval_set(*ev["t_test_u"], max_len),
    )


def item_counts(train: tuple[np.ndarray, ...], num_items: int) -> np.ndarray:
    """Training interactions per item index ([n + 1], index 0 = padding = 0)."""
    if not train:
        return np.zeros(num_items + 1, dtype=np.int64)
    return np.bincount(np.concatenate(train), minlength=num_items + 1).astype(np.int64)


class NextItemBatches:
    """Universal-training batches: per user the most recent `max_len + 1` training items, input =
    all but the last, target = the next item at every position (0 where there is none).

    One sample per user per epoch, as in the HSTU/SASRec ML-1M setup; users with a training
    sequence shorter than 2 give no next-item pair and are skipped.
    """

    def __init__(self, train: tuple[np.ndarray, ...], max_len: int, batch_size: int) -> None:
        usable = [s for s in train if len(s) >= 2]
        windows = right_aligned(usable, max_len + 1)
        self.inputs = torch.from_numpy(windows[:, :-1].copy())
        self.targets = torch.from_numpy(windows[:, 1:].copy())
        # A right-aligned window's first real item has no predecessor: its input slot is padding.
        self.targets[self.inputs == PAD] = PAD
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.inputs)

    def epoch(self, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.inputs), generator=generator)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            inputs = self.inputs[rows]
            # Trim all-padding columns on the left: shorter batches cost less attention.
            width = int((inputs != PAD).sum(1).max())
            yield {"input_ids": inputs[:, -width:], "target_ids": self.targets[rows][:, -width:]}


class TargetBatches:
    """Targeted-training batches: per user a random cut t of its target sequence; input = the
    target items before t (right-aligned, `max_len`), target = the item at t.

    BPR (paper eq. 6) only predicts the item after the sequence, so we draw a fresh cut each epoch
    (a standard augmentation) rather than always the last one, to see more of each sequence.
    """

    def __init__(self, target_train: tuple[np.ndarray, ...], max_len: int, batch_size: int) -> None:
        self.seqs = [s for s in target_train if len(s) >= 2]
        self.max_len = max_len
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.seqs) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.seqs)

    def epoch(self, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.seqs), generator=generator).tolist()
        cut_u = torch.rand(len(self.seqs), generator=generator).tolist()
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            histories, targets = [], []
            for r in rows:
                seq = self.seqs[r]
                cut = 1 + int(cut_u[r] * (len(seq) - 1))  # in [1, len - 1]
                histories.append(seq[:cut])
                targets.append(seq[cut])
            yield {
                "input_ids": torch.from_numpy(right_aligned(histories, self.max_len)),
                "target_ids": torch.tensor(targets, dtype=torch.int64),
            }
