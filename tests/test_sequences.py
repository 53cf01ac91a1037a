"""The one split (precise.store.sequences.split), the time cut of a cycle, and training batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from precise.store.sequences import SEQUENCE_SCHEMA, cut_before, split
from precise.train.data import (
    epoch_batches,
    epoch_rows,
    eval_set,
    extend_vocabulary,
    sample_windows,
    targeted_batch,
    universal_batch,
)


def table(rows: dict[str, list[tuple[int, str]]], twin: bool = False) -> pa.Table:
    """Stored sequences: user -> [(ts, item)] in event order. Offsets as the replayer produces them:
    a rating at 2 t, the `like` it implies right after it (`twin`: 2 t + 1)."""
    users = sorted(rows)
    return pa.table({
        "user_id": users,
        "item_ids": [[i for _, i in rows[u]] for u in users],
        "ts": [[t for t, _ in rows[u]] for u in users],
        "event_ids": [[f"{u}-{n}" for n in range(len(rows[u]))] for u in users],
        "offsets": [[2 * t + int(twin) for t, _ in rows[u]] for u in users],
        "length": [len(rows[u]) for u in users],
    }, schema=SEQUENCE_SCHEMA)


# u1 rates a..e at t = 0..4 and likes b, d, e; u2 rates c, a, b (likes all); u3 has 2 ratings.
RATED = table({"u1": [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")],
               "u2": [(0, "c"), (1, "a"), (2, "b")], "u3": [(0, "a"), (1, "b")]})
LIKED = table({"u1": [(1, "b"), (3, "d"), (4, "e")], "u2": [(0, "c"), (1, "a"), (2, "b")], "u3": [(1, "b")]},
              twin=True)


def test_the_reference_family_is_cut_by_position():
    s = split(RATED, name="all")
    assert s.users == ("u1", "u2", "u3")
    assert s.training_items() == [["a", "b", "c"], ["c"], ["a", "b"]]  # u3: too short, all training
    rows, histories, labels = s.cases("valid")
    assert (rows, histories, labels) == ([0, 1], [["a", "b", "c"], ["c"]], ["d", "a"])
    rows, histories, labels = s.cases("test")
    assert (rows, histories, labels) == ([0, 1], [["a", "b", "c", "d"], ["c", "a"]], ["e", "b"])


def test_a_target_family_is_cut_at_the_same_moments():
    s = split(RATED, LIKED, name="like")
    # u1: like b before the validation cut (d at t=3); d is the validation label, e the test label
    # u2: c before the cut (a at t=1): validation a, test b; u3: no cut, everything trains
    assert s.training_items() == [["b"], ["c"], ["b"]]
    assert s.cases("valid")[1:] == ([["b"], ["c"]], ["d", "a"])
    assert s.cases("test")[1:] == ([["b", "d"], ["c", "a"]], ["e", "b"])


def test_nothing_held_out_of_one_family_trains_the_other():
    """The leak of a per-family split: a target event that is another family's validation or test
    event must not be a training item of either."""
    ref, like = split(RATED, name="all"), split(RATED, LIKED, name="like")
    for fam in (ref, like):
        for which in ("valid", "test"):
            for row, label in zip(fam.cases(which)[0], fam.cases(which)[2], strict=True):
                user = fam.users[row]
                for other in (ref, like):
                    assert label not in other.training_items()[other.row_of()[user]], (user, label)


def test_a_target_event_not_at_the_cut_is_held_out_without_being_a_label():
    # u1's only like after the validation cut is e (t=4) = the test event: no validation case
    liked = table({"u1": [(0, "a"), (4, "e")]}, twin=True)
    s = split(RATED, liked)
    assert s.training_items() == [["a"]]
    assert s.cases("valid")[0] == [] and s.cases("test")[1:] == ([["a"]], ["e"])
    # no target event before the validation cut: no validation case (no history), a test case
    late = split(RATED, table({"u1": [(3, "d"), (4, "e")]}, twin=True))
    assert late.training_items() == [[]]
    assert late.cases("valid")[0] == [] and late.cases("test")[1:] == ([["d"]], ["e"])


def test_cut_before_keeps_each_users_past():
    cut = cut_before(RATED, 2)
    assert cut.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    assert cut.column("item_ids").to_pylist() == [["a", "b"], ["c", "a"], ["a", "b"]]
    assert cut.column("length").to_pylist() == [2, 2, 2]
    assert cut_before(RATED, 0).num_rows == 0 and cut_before(RATED, None) is RATED


def test_vocabulary_keeps_parent_indices_and_appends_new_items():
    assert extend_vocabulary(["b", "a"], ["a", "c"], ["d", "c"]) == ["b", "a", "c", "d"]


def test_windows_and_eval_sets_are_right_aligned():
    lookup = {i: n for n, i in enumerate("abcdefg", start=1)}
    windows, masks = sample_windows([["a", "b", "c"], ["c"], ["a", "b"]], lookup, max_len=3)
    assert windows.tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]] and masks is None  # ["c"] has no next-item pair
    # `all`: windows cover the whole history, each transition in exactly one (they share one item)
    every, _ = sample_windows([list("abcdefg")], lookup, max_len=3, windows="all")
    assert every.tolist() == [[4, 5, 6, 7], [1, 2, 3, 4]]
    # a stride overlaps them: a window ends every 2 items, the oldest one starts at the first item
    strided, _ = sample_windows([list("abcdefg")], lookup, max_len=3, windows="all", stride=2)
    assert strided.tolist() == [[4, 5, 6, 7], [2, 3, 4, 5], [0, 1, 2, 3]]
    # label masks: a window needs a label with an item before it
    _, label = sample_windows([list("abcdefg")], lookup, max_len=3, windows="all",
                              label_masks=[[True, False, False, False, False, True, False]])
    assert label.tolist() == [[False, False, True, False]]
    data = eval_set(["u1"], [["a", "b"]], ["c"], lookup, max_len=3)
    assert data.inputs.tolist() == [[0, 1, 2]] and data.targets.tolist() == [3]


def test_universal_batch_predicts_every_next_item():
    batch = universal_batch(torch.tensor([[0, 1, 2, 3], [0, 0, 4, 5]]))
    assert batch["input_ids"].tolist() == [[1, 2], [0, 4]]
    assert batch["target_ids"].tolist() == [[2, 3], [0, 5]]


def test_targeted_batch_cuts_at_label_positions_only():
    seq = torch.tensor([[1, 2, 3, 4]] * 50)
    mask = torch.tensor([[True, False, True, False]] * 50)  # position 0 has no history: never cut
    batch = targeted_batch(seq, torch.Generator().manual_seed(0), mask)
    assert set(batch["target_ids"].tolist()) == {3} and batch["input_ids"][0].tolist() == [0, 1, 2]


def test_targeted_history_of_all_scene_events_with_target_labels():
    from precise.train.recipe import task_data

    splits = {"reference": split(RATED, name="all"), "family": split(RATED, LIKED, name="like")}
    data = task_data(splits, "targeted", history="all")
    assert data.family == "all" and data.users == ["u1", "u2", "u3"]
    assert data.items == [["a", "b", "c"], ["c"], ["a", "b"]]  # all-scene items before the validation cut
    assert data.label_masks == [[False, True, False], [True], [False, True]]  # the liked ones
    # the labels are the like family's held-out events; the histories the all-scene events before them
    assert data.valid == (["u1", "u2"], [["a", "b", "c"], ["c"]], ["d", "a"])
    assert data.test == (["u1", "u2"], [["a", "b", "c", "d"], ["c", "a"]], ["e", "b"])
    own = task_data(splits, "targeted", history="target")
    assert own.family == "like" and own.items == [["b"], ["c"], ["b"]] and own.label_masks is None


def test_targeted_batch_cuts_inside_each_window():
    seq = torch.tensor([[0, 1, 2, 3], [0, 0, 4, 5]])
    batch = targeted_batch(seq, torch.Generator().manual_seed(0))
    for history, target, row in zip(batch["input_ids"].tolist(), batch["target_ids"].tolist(), seq.tolist(),
                                    strict=True):
        real = [i for i in row if i]
        cut = real.index(target)
        assert cut >= 1 and [i for i in history if i] == real[:cut]


def test_epoch_rows_split_a_permutation_evenly_and_repeat_by_epoch():
    one = epoch_rows(10, seed=3, epoch=2)
    assert sorted(one.tolist()) == list(range(10))
    assert torch.equal(one, epoch_rows(10, seed=3, epoch=2)) and not torch.equal(one, epoch_rows(10, 3, 3))
    halves = [epoch_rows(11, 3, 2, rank, 2) for rank in (0, 1)]
    assert [len(h) for h in halves] == [5, 5]  # the same number of steps on every worker
    assert not set(halves[0].tolist()) & set(halves[1].tolist())
    samples = torch.from_numpy(np.arange(40).reshape(10, 4))
    batches = list(epoch_batches(samples, "universal", 4, seed=3, epoch=2))
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 2]
