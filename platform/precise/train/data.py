"""What training consumes: the item vocabulary, training samples and evaluation cases, and batches.

Everything here is pure (no store, no Ray): the recipe (precise.train.recipe) reads the lake's
sequences, splits them with `precise.store.sequences.split`, and turns them into these arrays, the
same way for the Ray Train job and the in-process benchmark.

* Vocabulary: item ids -> dense indices 1..n (0 is padding); a parent model's items keep their
  indices, new ones are appended, so every trained row keeps its meaning across versions.
* Samples: right-aligned windows of `max_len + 1` item indices: per user its most recent training
  items (`windows: last`) or windows covering its whole training history (`all`; consecutive
  windows share one item, so every next-item transition is in exactly one). Universal training
  predicts every next item of a window; targeted training cuts it at a random label position each
  epoch and predicts the item at the cut (paper eq. 6 only scores the item after the history). A
  label mask says which positions may be cut at: every position when the history is the target
  family itself, the target events when the history is the all-scene sequence.
* Batches of an epoch: a permutation seeded by (seed, epoch), split evenly across workers, so one
  worker and the in-process loop see the very same batches, and a resumed run repeats none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from precise.model.config import PAD
from precise.model.inputs import right_aligned


def extend_vocabulary(parent_items: list[str], *sources: list[str]) -> list[str]:
    """Parent items first (indices unchanged), then the new ids of each source in order."""
    known = set(parent_items)
    new: dict[str, None] = {}
    for source in sources:
        for item in source:
            if item not in known:
                new[item] = None
    return [*parent_items, *new]


def index_sequences(sequences: list[list[str]], lookup: dict[str, int]) -> list[np.ndarray]:
    return [np.fromiter((lookup[i] for i in seq), dtype=np.int64, count=len(seq)) for seq in sequences]


@dataclass(frozen=True)
class EvalSet:
    """Inputs (right-aligned, last `max_len`) and the held-out next item for each evaluated user."""

    users: tuple[str, ...]
    inputs: np.ndarray  # [U, max_len] int64
    targets: np.ndarray  # [U] int64

    def __len__(self) -> int:
        return len(self.targets)


def eval_set(users: list[str], histories: list[list[str]], labels: list[str], lookup: dict[str, int],
             max_len: int) -> EvalSet:
    return EvalSet(tuple(users), right_aligned(index_sequences(histories, lookup), max_len),
                   np.asarray([lookup[label] for label in labels], dtype=np.int64))


def _window_bounds(n: int, max_len: int, windows: str, stride: int | None = None) -> list[tuple[int, int]]:
    """[start, end) of the windows of a sequence of `n` items (newest first): a window ends every
    `stride` items (None: every `max_len`, so consecutive windows share one item)."""
    bounds, end = [], n
    while end >= 2:
        bounds.append((max(0, end - max_len - 1), end))
        if windows == "last" or end <= max_len + 1:
            break  # the oldest window starts at the first item: an earlier end adds no transition
        end -= stride or max_len
    return bounds


def sample_windows(training_items: list[list[str]], lookup: dict[str, int], max_len: int, windows: str = "last",
                   label_masks: list[list[bool]] | None = None, stride: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """([S, max_len + 1] windows, [S, max_len + 1] label mask or None): the training samples.

    A window needs a next-item pair (2 items); with label masks, a label position with an item
    before it. The mask is right-aligned with its window (None: every position may be a label)."""
    rows, masks = [], []
    for n, seq in enumerate(training_items):
        for start, end in _window_bounds(len(seq), max_len, windows, stride):
            if label_masks is not None:
                mask = label_masks[n][start:end]
                if not any(mask[1:]):
                    continue  # no label with a history in this window
                masks.append(np.asarray(mask, dtype=bool))
            rows.append(seq[start:end])
    if not rows:
        return np.zeros((0, max_len + 1), dtype=np.int64), None if label_masks is None else np.zeros(
            (0, max_len + 1), dtype=bool)
    samples = right_aligned(index_sequences(rows, lookup), max_len + 1)
    if label_masks is None:
        return samples, None
    mask = np.zeros(samples.shape, dtype=bool)
    for row, m in enumerate(masks):
        mask[row, max_len + 1 - len(m):] = m
    return samples, mask


def item_counts(training_items: list[list[str]], lookup: dict[str, int], num_items: int) -> np.ndarray:
    """Training interactions per item index ([n + 1], index 0 = padding = 0)."""
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for seq in training_items:
        np.add.at(counts, [lookup[i] for i in seq], 1)
    return counts


# ---- batches -------------------------------------------------------------------------------------


def epoch_rows(num_samples: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This worker's sample rows for `epoch`: an even share of a permutation seeded by (seed, epoch).
    Every worker gets the same count (DDP needs the same number of steps everywhere)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator)
    share = num_samples // world
    return order[rank * share:(rank + 1) * share]


def universal_batch(seq: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-item pairs from right-aligned windows [B, L + 1]; left columns of padding trimmed."""
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[inputs == PAD] = PAD  # a window's first real item has no predecessor
    width = max(int((inputs != PAD).sum(1).max()), 1)
    return {"input_ids": inputs[:, -width:], "target_ids": targets[:, -width:]}


def targeted_batch(seq: torch.Tensor, generator: torch.Generator,
                   mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Targeted samples: per window a random cut c (a label position with an item before it),
    history = the items before c (right-aligned, width L), target = the item at c."""
    total = seq.shape[1]
    lengths = (seq != PAD).sum(1)
    first = total - lengths  # column of each row's oldest item
    if mask is None:
        cut = first + 1 + (torch.rand(len(seq), generator=generator) * (lengths - 1).clamp(min=1)).long()
    else:
        allowed = mask & (torch.arange(total)[None, :] > first[:, None])
        cut = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
    target = seq.gather(1, cut[:, None]).squeeze(1)
    # history column j (right-aligned, width total - 1) holds item cut - (total - 1 - j)
    cols = torch.arange(total - 1)[None, :]
    source = cut[:, None] - (total - 1 - cols)
    history = seq.gather(1, source.clamp(min=0))
    history[source < first[:, None]] = PAD
    return {"input_ids": history, "target_ids": target}


def epoch_batches(samples: torch.Tensor, kind: str, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1, masks: torch.Tensor | None = None, repeat: int = 1
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of one epoch for one worker: universal next-item pairs, or targeted cuts
    (`repeat` cuts of every window, at label positions of `masks`)."""
    rows = epoch_rows(len(samples) * repeat, seed, epoch, rank, world) % max(len(samples), 1)
    cuts = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7 + rank + 1)
    for start in range(0, len(rows), batch_size):
        chosen = rows[start:start + batch_size]
        if kind == "universal":
            yield universal_batch(samples[chosen])
        else:
            yield targeted_batch(samples[chosen], cuts, None if masks is None else masks[chosen])
