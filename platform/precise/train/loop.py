"""A plain single-process training loop.

`train_step(model, batch, optimizer)` is the unit the Ray Train jobs reuse: it knows nothing about
epochs, data loading or distribution; any model with a `loss(batch)` method works (universal or
targeted). `fit` adds epochs, alternate training (token table frozen for the first
`freeze_tokens_epochs` epochs), periodic validation and best-epoch selection.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training sequences
    batch_size: int = 128  # sequences per optimizer step (per Ray Train worker in the jobs)
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eval_every: int = 1  # validate every n epochs (and after the last one)
    freeze_tokens_epochs: int = 0  # alternate training: token table frozen for these first epochs
    patience: int | None = None  # stop after this many validations without improvement
    amp: str | None = None  # "bf16": autocast matmuls to bfloat16 (CUDA)
    grad_clip: float | None = None  # max gradient norm (clip_grad_norm_); None: no clipping
    seed: int = 42  # torch seed (the jobs add the worker rank)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown train config keys: {sorted(unknown)}")
        merged = {**dict(values), **overrides}
        if "betas" in merged:
            merged["betas"] = tuple(merged["betas"])
        return cls(**merged)


class Batches(Protocol):
    num_samples: int

    def epoch(self, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]: ...


class TrainableModel(Protocol):
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over all parameters (betas as in the HSTU repository). A frozen token table has no
    gradient, so a step leaves it (and its moments) untouched until it is unfrozen."""
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def amp_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "none", "fp32"):
        return None
    if name == "bf16":
        return torch.bfloat16
    raise ValueError(f"amp must be null or 'bf16', got {name!r}")


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    autocast: torch.dtype | None = None,
    grad_clip: float | None = None,
) -> torch.Tensor:
    """One optimisation step on one batch (already on the model's device).

    Returns the detached loss *tensor*: calling `.item()` every step would make a GPU wait for
    each step to finish; callers sum the tensors and synchronise once per epoch.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    device_type = next(model.parameters()).device.type
    with torch.autocast(
        device_type=device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None
    ):
        loss = model.loss(batch)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)  # per epoch
    epoch_seconds: list[float] = field(default_factory=list)
    samples_per_s: list[float] = field(default_factory=list)
    val_epochs: list[int] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("-inf")

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (f.name for f in fields(self))}


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def fit(
    model: nn.Module,
    batches: Batches,
    config: TrainConfig,
    *,
    validate: Callable[[nn.Module], float] | None = None,
    device: torch.device | str = "cpu",
    optimizer: torch.optim.Optimizer | None = None,
    log: Callable[[str], None] | None = print,
    name: str = "model",
    validate_first: bool = False,
) -> History:
    """Train for `config.epochs` epochs; keep (and restore at the end) the weights of the epoch
    with the best validation metric (higher is better) when `validate` is given.

    `validate_first`: also validate the starting weights (recorded as epoch 0), so that a
    warm-started model whose fine-tuning does not help falls back to where it started."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = optimizer or make_optimizer(model, config)
    cast = amp_dtype(config.amp)
    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    items = getattr(model, "items", None)

    def consider(epoch: int, metric: float) -> bool:
        nonlocal best_state
        history.val_epochs.append(epoch)
        history.val_metric.append(metric)
        if metric <= history.best_metric:
            return False
        history.best_metric, history.best_epoch = metric, epoch
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    if validate is not None and validate_first:
        consider(0, float(validate(model)))
        if log is not None:
            log(f"[{name}] epoch 0 (start) val {history.best_metric:.4f}")
    for epoch in range(1, config.epochs + 1):
        if items is not None and hasattr(items, "set_tokens_trainable"):
            items.set_tokens_trainable(epoch > config.freeze_tokens_epochs)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        steps = 0
        for batch in batches.epoch(generator):
            total += train_step(
                model, to_device(batch, device), optimizer, autocast=cast, grad_clip=config.grad_clip
            )
            steps += 1
        loss = float(total) / max(steps, 1)  # one synchronisation per epoch
        seconds = time.perf_counter() - start
        history.train_loss.append(loss)
        history.epoch_seconds.append(seconds)
        history.samples_per_s.append(batches.num_samples / seconds if seconds > 0 else 0.0)
        line = (
            f"[{name}] epoch {epoch}/{config.epochs} loss {loss:.4f} ({history.samples_per_s[-1]:.0f} seq/s)"
        )
        if validate is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
            metric = float(validate(model))
            line += f" val {metric:.4f}"
            since_best = 0 if consider(epoch, metric) else since_best + 1
        if log is not None:
            log(line)
        if config.patience is not None and since_best >= config.patience:
            if log is not None:
                log(f"[{name}] early stop: no improvement in {since_best} validations")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (e.g. a universal checkpoint to warm-start from)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
