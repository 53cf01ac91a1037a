"""Universal and targeted training as Ray Train jobs: the recipe (precise.train.recipe) on workers.

The driver runs `recipe.setup` (vocabulary, initial weights, samples, validation cases from the
store) and puts the payload into the object store once. Each worker runs `recipe.fit` on its even
share of every epoch, wrapped in DDP when there are several workers (gloo on CPU, nccl on GPU);
rank 0 validates, and after every epoch writes a checkpoint (the current weights, the optimizer,
the best epoch's weights, the progress) and reports. A worker that dies makes Ray Train restart the
group (up to `training.max_failures` times) and the loop resumes from the last checkpoint Ray Train
registered (one reported moments before the death may not be yet: that epoch is redone, with the
same batches: they are seeded by epoch). The driver registers the best epoch's weights.

Rank 0 writes one line per epoch (loss, samples/s, validation, ETA) to its stdout, which Ray
forwards to the driver: the job's log (`ray job logs`, the dashboard's job page) shows it while the
job runs. When the driver's stderr is a terminal, rank 0 also sends a progress bar over each epoch's
batches that the driver draws there (`ray.experimental.tqdm_ray`).
"""

from __future__ import annotations

import builtins
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from precise.config import PreciseConfig
from precise.metrics import best_effort
from precise.metrics.train import epoch_finished, model_registered
from precise.runtime import connect_ray
from precise.store.registry import ModelRegistry, ModelVersion
from precise.train import recipe
from precise.train.recipe import Progress, Resume, Start, TrainingError

__all__ = ["DDP_OPTIONS", "TrainingError", "TrainingFailed", "TrainingRun", "run_training", "scaling_config",
           "set_worker_threads"]


class TrainingFailed(TrainingError):
    """Training started and failed (the failure budget is spent, or Ray Train returned an error)."""


_PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # training.preemption_watcher

# A Ray Train checkpoint (under RunConfig.storage_path): the run in progress, not a registered model.
_WEIGHTS, _BEST, _OPTIMIZER, _PROGRESS = "weights.safetensors", "best.safetensors", "optimizer.pt", "progress.json"


def _save_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                     best: dict[str, torch.Tensor] | None) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(directory, _WEIGHTS))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, os.path.join(directory, _BEST))
    torch.save(optimizer.state_dict(), os.path.join(directory, _OPTIMIZER))
    with open(os.path.join(directory, _PROGRESS), "w") as handle:
        json.dump(progress.as_json(), handle)


def _load_checkpoint(directory: str) -> Resume:
    best = os.path.join(directory, _BEST)
    with open(os.path.join(directory, _PROGRESS)) as handle:
        progress = Progress(**json.load(handle))
    return Resume(model_state=load_file(os.path.join(directory, _WEIGHTS)),
                  optimizer_state=torch.load(os.path.join(directory, _OPTIMIZER), weights_only=True),
                  best_state=load_file(best) if os.path.exists(best) else None, progress=progress)


# How a worker wraps the model in DDP when there are several (tests/test_ddp.py checks the
# gradients are the workers' average with these):
# * find_unused_parameters off: every trainable parameter of every model variant gets a gradient in
#   every step (the MoE computes all experts and zero-weights the unchosen ones), so the extra
#   autograd-graph traversal per step would find nothing; a variant that leaves one unused fails
#   loudly in its second step, and tests/test_ddp.py checks every variant.
# * forward_sync_buffers off: the only buffer is the token mask, fixed for the whole run, and DDP
#   still copies rank 0's at wrap time; broadcasting it before every forward adds a collective,
#   and with it a point where every worker waits for the slowest, to each step.
# * gradient_as_bucket_view: gradients live in the allreduce buckets (no copy in and out per step).
DDP_OPTIONS: dict[str, Any] = {"find_unused_parameters": False, "forward_sync_buffers": False,
                               "gradient_as_bucket_view": True}


def set_worker_threads(threads: int) -> None:
    """`training.threads_per_worker` torch threads in this worker, intra-op and inter-op, and the
    same for OpenMP/MKL in anything started from it. Ray sets OMP_NUM_THREADS from the worker's
    CPU reservation (floor, at least 1) before torch loads, but torch's inter-op pool defaults to
    one thread per core whatever it says: set both, so that N workers on a node run N x
    threads_per_worker threads, not N x its cores."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable before the first inter-op work (a restarted loop in the same worker)
            pass


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """The Ray Train loop: `recipe.fit` on this worker's share, checkpointed and reported per epoch."""
    import ray
    import ray.train
    import ray.train.torch

    set_worker_threads(cfg["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    payload: recipe.Payload = ray.get(cfg["payload"])
    device = ray.train.torch.get_device() if cfg["use_gpu"] else torch.device("cpu")
    resume = None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            resume = _load_checkpoint(directory)

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy_kwargs=dict(DDP_OPTIONS))

    def agree(stop: bool) -> bool:
        if world == 1:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def on_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                 best: dict[str, torch.Tensor] | None) -> None:
        record = progress.history[-1]
        metrics = {**{k: v for k, v in record.items() if k != "samples"}, "world_size": world,
                   "best_epoch": progress.best_epoch, "resumed_from_epoch": progress.resumed_from_epoch}
        best_effort(epoch_finished, payload.kind, payload.label, rank, record["samples"] // world, metrics)
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            _save_checkpoint(directory, model, optimizer, progress, best)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    recipe.fit(payload, rank=rank, world=world, device=device, wrap=wrap if world > 1 else None, agree=agree,
               resume=resume, on_epoch=on_epoch, log=worker_log,
               progress_bar=terminal_bar if cfg.get("progress") and rank == 0 else None)


def worker_log(line: str) -> None:
    """One line on the worker's stdout, which Ray forwards to the driver: the job's log (`ray job
    logs`, the dashboard's job page) while it runs. Not `print`: Ray Train V2 patches it into its
    logger and still tees to stdout, so every line would reach the driver twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def terminal_bar(description: str, total: int, batches: Iterator[Any]) -> Iterator[Any]:
    """The epoch's batches as a progress bar that the driver draws in its terminal
    (`ray.experimental.tqdm_ray`: the worker sends its state through its log, the driver renders
    it with tqdm and keeps the other log lines clear of it)."""
    from ray.experimental import tqdm_ray

    def send(call: Callable[[], None]) -> None:
        # tqdm_ray sends its state with `print`, which Ray Train V2 patches into its logger: that copy
        # reaches the driver with an extra empty line and fills Train's log file. Ray's own `print`
        # (kept by tqdm_ray before the patch) sends it once, to stdout.
        patched, builtins.print = builtins.print, tqdm_ray._print
        try:
            call()
        finally:
            builtins.print = patched

    bar = tqdm_ray.tqdm(desc=description, total=total, unit="batch")
    try:
        for batch in batches:
            yield batch
            send(bar.update)
    finally:
        send(bar.close)


@dataclass
class TrainingRun:
    version: ModelVersion
    metrics: dict[str, Any]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"model": self.version.ref, "seconds": round(self.seconds, 1), **self.metrics}


def scaling_config(config: PreciseConfig, num_workers: int | None = None) -> Any:
    """Ray Train's ScalingConfig from `training`: num_workers (or the override), cpus_per_worker
    and use_gpu (one GPU per worker; DDP over nccl then)."""
    from ray.train import ScalingConfig

    t = config.training
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return ScalingConfig(num_workers=num_workers or t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources)


def _start(kind: str, full: bool, warm_start: bool) -> Start:
    if kind == "universal":
        return "scratch" if full else "parent"
    return "parent" if warm_start else "continue"


def run_training(config: PreciseConfig, kind: str, full: bool = False, num_workers: int | None = None,
                 storage_path: str | None = None, until_ts: int | None = None, warm_start: bool = True,
                 start: Start | None = None) -> TrainingRun:
    """Set up, train with Ray Train (TorchTrainer), register the best epoch; returns the new version.

    universal: incremental from the LATEST universal version (`full`: from scratch); targeted:
    warm-started from the LATEST universal version (`warm_start=False`: continue the LATEST
    targeted version). `start` overrides both (see `recipe.Start`)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    began = time.monotonic()
    t = config.training
    connect_ray()  # ships this `precise` to the Ray Train workers (precise.runtime)
    registry = ModelRegistry(config.storage.resolved_root())
    setup = recipe.setup(config, kind, start=start or _start(kind, full, warm_start), until_ts=until_ts,
                         registry=registry)
    workers = num_workers or t.num_workers
    root = config.storage.resolved_root()
    run_name = f"{kind}{'-' + setup.task if setup.task else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[{kind}/{setup.payload.label}] {setup.data_window['samples']} samples, "
          f"{setup.data_window['valid_users']} validation users, {len(setup.items)} items; {workers} worker(s)",
          file=sys.stderr, flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        # progress: a bar per epoch when a person runs the driver in a terminal (never in a job's log)
        train_loop_config={"payload": ray.put(setup.payload), "threads": t.threads_per_worker, "use_gpu": t.use_gpu,
                           "progress": sys.stderr.isatty()},
        scaling_config=scaling_config(config, workers),
        run_config=RunConfig(name=run_name, storage_path=storage_path or str(Path(root) / "ray_results"),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    # Read by Ray Train's controller, which gets it from this process's environment.
    os.environ[_PREEMPTION_WATCHER_ENV] = "1" if t.preemption_watcher else "0"
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        # Ray Train V2 (Ray's default) raises once the failure budget is spent, where V1 returned
        # the error in `result.error`: either way the job reports one TrainingFailed.
        raise TrainingFailed(f"{kind} training failed (after up to {t.max_failures} restarts): {exc}") from exc
    if result.error is not None:
        raise TrainingFailed(f"{kind} training failed: {result.error}")
    with result.checkpoint.as_directory() as directory:
        done = _load_checkpoint(directory)
    state = done.best_state if done.best_state is not None else done.model_state
    version = recipe.register(setup, state, done.progress, config, registry,
                              extra={"num_workers": workers, "ray_train_run": run_name})
    metrics = version.metadata["metrics"]
    best_effort(model_registered, kind, setup.payload.label, version.ref, metrics)
    return TrainingRun(version, dict(metrics), time.monotonic() - began)
