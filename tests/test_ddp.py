"""The DDP options the Ray Train workers wrap the model with (precise.train.ray_job.DDP_OPTIONS):
every trainable parameter of every model variant gets a gradient (so no unused-parameter search
is needed), and two gloo workers training with them take the step one process takes on the
average of their two losses. Two real processes over gloo, without Ray (a few seconds); the Ray
Train job itself: tests/test_recipe.py, tests/test_training_jobs.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from precise.config import TrainOptions
from precise.model import ModelConfig, build_model
from precise.model.config import FUSIONS, TARGET_LOSSES
from precise.train import recipe
from precise.train.data import targeted_batch, universal_batch
from precise.train.ray_job import DDP_OPTIONS

N_ITEMS, MAX_LEN, TOKENS, DIM = 30, 6, 3, 8


def token_table(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random((N_ITEMS + 1, TOKENS)) < 0.8
    mask[:, 0] = True
    return rng.standard_normal((N_ITEMS + 1, TOKENS, DIM)).astype(np.float32), mask


def windows(rows: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    samples = rng.integers(1, N_ITEMS + 1, (rows, MAX_LEN + 1))
    for row in range(rows):
        samples[row, : rng.integers(0, MAX_LEN - 1)] = 0  # some short windows (left padding)
    return torch.from_numpy(samples.astype(np.int64))


def model_config(**changes: object) -> ModelConfig:
    return ModelConfig(**{"num_items": N_ITEMS, "max_len": MAX_LEN, "id_dim": DIM, "text_dim": DIM, "token_dim": DIM,
                          "num_layers": 1, "num_negatives": 4, "dropout": 0.0, **changes})


VARIANTS = [("universal", {"fusion": f, **extra}) for f, extra in itertools.product(
    FUSIONS, ({}, {"full_softmax": True}, {"num_negatives": 200}, {"in_batch_negatives": 3}))] + [
    ("targeted", {"fusion": f, "target_loss": loss}) for f, loss in itertools.product(FUSIONS, TARGET_LOSSES)]


@pytest.mark.parametrize(("kind", "changes"), VARIANTS, ids=lambda v: str(v))
def test_every_trainable_parameter_gets_a_gradient(kind, changes):
    """DDP_OPTIONS turns find_unused_parameters off: a variant leaving a parameter without a gradient
    would fail its second DDP step. (num_negatives 200: the path that embeds only the items used.)"""
    model = build_model(model_config(**changes), kind, token_table=token_table())
    seq = windows(16, seed=1)
    batch = universal_batch(seq) if kind == "universal" else targeted_batch(seq, torch.Generator().manual_seed(0))
    model.loss(batch).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def _ddp_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        config, table = model_config(fusion="moe"), token_table()
        torch.manual_seed(0)
        model = build_model(config, "universal", token_table=table)
        options = TrainOptions(lr=1e-2)
        optimizer = recipe.make_optimizer(model, options, ())
        trainable = recipe.Trainable(model, lambda m: torch.nn.parallel.DistributedDataParallel(m, **DDP_OPTIONS))
        grads = []
        for step in range(2):  # a second step: DDP checks the first one's reduction finished
            torch.manual_seed(100 * step + rank)  # this worker's negatives
            recipe.train_step(trainable, universal_batch(windows(8, seed=10 * step + rank)), optimizer)
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        torch.save({"state": model.state_dict(), "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_two_gloo_workers_step_on_the_average_of_their_losses(tmp_path: Path):
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    context = mp.get_context("spawn")
    workers = [context.Process(target=_ddp_worker, args=(r, str(tmp_path / "store"), outs[r])) for r in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    results = [torch.load(out, weights_only=True) for out in outs]

    # one process, the same two steps on the mean of the two workers' losses (same batches, same negatives)
    torch.manual_seed(0)
    reference = build_model(model_config(fusion="moe"), "universal", token_table=token_table())
    optimizer = recipe.make_optimizer(reference, TrainOptions(lr=1e-2), ())
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for rank in range(2):
            torch.manual_seed(100 * step + rank)
            losses.append(reference.loss(universal_batch(windows(8, seed=10 * step + rank))))
        (sum(losses) / 2).backward()
        for rank in range(2):
            for name, param in reference.named_parameters():
                torch.testing.assert_close(results[rank]["grads"][step][name], param.grad, rtol=1e-4, atol=1e-6)
        optimizer.step()
    # the replicas stay identical (compared with the reference, AdamW would amplify float noise in
    # gradients that are zero in theory, such as the attention's key bias)
    for name, value in results[0]["state"].items():
        torch.testing.assert_close(results[1]["state"][name], value, rtol=0, atol=0)
