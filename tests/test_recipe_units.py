"""The recipe's training loop on a tiny real model: best-epoch selection, the warm start validated
as epoch 0, early stopping, resuming, learning-rate groups. (The recipe on the real lake and Ray
Train: tests/test_recipe.py.)"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from precise.config import TrainOptions
from precise.model import ModelConfig, build_model
from precise.train import recipe
from precise.train.data import EvalSet

N_ITEMS, MAX_LEN = 40, 6


def payload(options: TrainOptions, from_parent: bool = False, seed: int = 0) -> recipe.Payload:
    rng = np.random.default_rng(seed)
    # users walk the catalogue in steps of 1: a learnable next-item rule
    starts = rng.integers(1, N_ITEMS - MAX_LEN - 2, 64)
    samples = np.stack([np.arange(s, s + MAX_LEN + 1) for s in starts]).astype(np.int64)
    valid_starts = rng.integers(1, N_ITEMS - MAX_LEN - 2, 32)
    valid = EvalSet(tuple(f"u{n}" for n in range(32)),
                    np.stack([np.arange(s, s + MAX_LEN) for s in valid_starts]).astype(np.int64),
                    (valid_starts + MAX_LEN).astype(np.int64))
    config = ModelConfig(num_items=N_ITEMS, max_len=MAX_LEN, fusion="id", id_dim=8, num_layers=1,
                         num_negatives=8, dropout=0.0)
    torch.manual_seed(seed)
    state = build_model(config, "universal").state_dict()
    return recipe.Payload(kind="universal", label="all", model_config=config, options=options, initial_state=state,
                          token_table=None, samples=samples, masks=None, repeat=1, valid=valid,
                          from_parent=tuple(state) if from_parent else (), select_metric="N@10", eval_ks=(10,),
                          eval_batch_users=16)


def val(p: recipe.Payload, state: dict) -> float:
    model = build_model(p.model_config, p.kind)
    model.load_state_dict(state)
    return recipe.validation_metrics(model, p, "cpu")["N@10"]


def test_fit_returns_the_best_epochs_weights():
    p = payload(TrainOptions(epochs=4, batch_size=16, lr=5e-3, seed=1))
    best, progress = recipe.fit(p)
    assert [r["epoch"] for r in progress.history] == [1, 2, 3, 4]  # a fresh model: no epoch 0
    assert progress.best_metric == max(r["val_ndcg_at_10"] for r in progress.history)
    assert val(p, best) == pytest.approx(progress.best_metric, abs=1e-9)
    assert progress.history[-1]["loss"] < progress.history[0]["loss"]


def test_a_warm_start_is_validated_and_kept_when_fine_tuning_does_not_help():
    # lr 0: every epoch scores exactly what the start scores; ties keep the start (epoch 0)
    p = payload(TrainOptions(epochs=2, batch_size=16, lr=0.0), from_parent=True)
    best, progress = recipe.fit(p)
    assert progress.history[0]["epoch"] == 0 and progress.best_epoch == 0
    assert all(torch.equal(best[k], v) for k, v in p.initial_state.items())


def test_patience_stops_training():
    p = payload(TrainOptions(epochs=20, batch_size=16, lr=0.0, patience=2), from_parent=True)
    _, progress = recipe.fit(p)
    assert progress.epoch == 2 and progress.best_epoch == 0


def test_a_resumed_run_ends_where_an_uninterrupted_one_does():
    """Batches, dropout and negatives are seeded by epoch: resuming after epoch 2 from its
    checkpoint reproduces the uninterrupted run exactly."""
    options = TrainOptions(epochs=4, batch_size=16, lr=5e-3, seed=3)
    p = payload(options)
    checkpoints = {}

    def keep(model, optimizer, progress, best):
        checkpoints[progress.epoch] = recipe.Resume(
            {k: v.clone() for k, v in model.state_dict().items()},
            copy.deepcopy(optimizer.state_dict()),
            None if best is None else {k: v.clone() for k, v in best.items()},
            recipe.Progress(**copy.deepcopy(progress.as_json())))

    best, progress = recipe.fit(p, on_epoch=keep)
    resumed_best, resumed = recipe.fit(p, resume=checkpoints[2])
    assert resumed.resumed_from_epoch == 2 and resumed.epoch == 4
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in progress.history]
    assert all(torch.equal(resumed_best[k], best[k]) for k in best)


def test_learning_rate_groups():
    p = payload(TrainOptions(lr=1e-3, warm_start_lr=1e-4, item_lr=0.0))
    model = build_model(p.model_config, "universal")
    inherited = tuple(name for name in dict(model.named_parameters()) if name.startswith("encoder.blocks"))
    groups = recipe.make_optimizer(model, p.options, inherited).param_groups
    names = {id(param): name for name, param in model.named_parameters()}
    lr_of = {names[id(param)]: group["lr"] for group in groups for param in group["params"]}
    assert lr_of["items.id_emb.weight"] == 0.0
    assert all(lr_of[n] == 1e-4 for n in inherited)
    assert lr_of["encoder.pos_emb.weight"] == 1e-3


def test_metric_key():
    assert recipe.metric_key("N@10") == "val_ndcg_at_10" and recipe.metric_key("R@50") == "val_recall_at_50"


def test_without_validation_cases_the_last_epoch_is_kept_and_patience_waits():
    """An early cycle may have no user with a held-out event yet: training still runs every epoch
    and registers the last one."""
    p = payload(TrainOptions(epochs=3, batch_size=16, lr=5e-3, patience=1), from_parent=True)
    p.valid = EvalSet((), np.zeros((0, MAX_LEN), np.int64), np.zeros(0, np.int64))
    best, progress = recipe.fit(p)
    assert progress.epoch == 3 and progress.best_epoch == -1
    assert all("val_ndcg_at_10" not in r for r in progress.history)
    assert not all(torch.equal(best[k], v) for k, v in p.initial_state.items())  # trained, not the start


def test_ema_decay_selects_and_returns_the_average_of_the_weights():
    """With `ema_decay`, validation scores the running average of the weights, and the selected
    epoch's average (not the trained weights) is what fit returns."""
    decay = 0.9
    p = payload(TrainOptions(epochs=3, batch_size=16, lr=5e-3, seed=1, ema_decay=decay))
    trained = {}

    def keep(model, _opt, progress, _best):
        trained[progress.epoch] = ({k: v.clone() for k, v in model.state_dict().items()},
                                   {k: v.clone() for k, v in recipe.evaluated_model(model).state_dict().items()})

    best, progress = recipe.fit(p, on_epoch=keep)
    weights, average = trained[progress.best_epoch]
    assert all(torch.equal(best[k], v) for k, v in average.items())
    assert val(p, best) == pytest.approx(progress.best_metric, abs=1e-9)
    name = "items.id_emb.weight"
    assert not torch.equal(average[name], weights[name])  # an average, not the last step
    # the average lies between the start and the trained weights: it moved from the start by less
    start = p.initial_state[name]
    assert 0 < (average[name] - start).norm() < (weights[name] - start).norm()


def test_weight_average_follows_the_model_by_its_decay():
    model = torch.nn.Linear(2, 1)
    average = recipe.WeightAverage(model, 0.75)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    average.update()
    assert torch.allclose(average.model.weight, before + 1.0)  # 0.75 * old + 0.25 * new
    assert not average.model.weight.requires_grad
