"""The plain loop: best-epoch selection, restoring the best weights, validating the start."""

from __future__ import annotations

import torch
from torch import nn

from precise.train.loop import TrainConfig, fit


class Toy(nn.Module):
    """loss pulls w towards 5; the 'validation metric' prefers w near 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.w - 5.0) ** 2


class OneBatch:
    num_samples = 1

    def epoch(self, generator: torch.Generator):
        yield {"x": torch.zeros(1)}


def test_fit_restores_the_best_epoch_and_can_fall_back_to_the_start():
    config = TrainConfig(epochs=3, lr=0.5, eval_every=1)
    model = Toy()
    history = fit(model, OneBatch(), config, validate=lambda m: -abs(m.w.item()), log=None)
    assert history.best_epoch == 1 and history.val_epochs == [1, 2, 3]
    assert abs(model.w.item() - 0.5) < 1e-6  # AdamW's first step moves w by lr: the best epoch's weight

    model = Toy()
    history = fit(
        model, OneBatch(), config, validate=lambda m: -abs(m.w.item()), log=None, validate_first=True
    )
    assert history.best_epoch == 0 and history.val_epochs == [0, 1, 2, 3]
    assert model.w.item() == 0.0  # fine-tuning never helped: the starting weights are kept
    assert history.train_loss[-1] < history.train_loss[0]


def test_fit_stops_early_without_improvement():
    model = Toy()
    config = TrainConfig(epochs=10, lr=0.5, eval_every=1, patience=2)
    history = fit(model, OneBatch(), config, validate=lambda m: -abs(m.w.item()), log=None)
    assert len(history.train_loss) == 3  # epoch 1 best, then two without improvement
