"""Ray Train on real parts: a worker killed mid-run resumes from its last checkpoint, and ends
exactly where an uninterrupted run ends; a spent failure budget is a clear error.

Every run here trains the same small id-only universal model from scratch (`full=True`: the
registry's LATEST never leaks into a later run) on a copy of the session's ML-100k lake, same seed,
same epochs. Batches, dropout and negatives are seeded by (seed, epoch) and a checkpoint holds the
weights, the optimizer and the best epoch so far, so the resumed run redoes the epochs after its
checkpoint with the very same batches: its result equals the uninterrupted run's (float noise only).
"""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from precise.config import PreciseConfig
from precise.stack import RayHead
from precise.stack.process import recorded_process

pytestmark = pytest.mark.integration

EPOCHS = 6
MODEL = {"fusion": "id", "max_len": 50, "id_dim": 32, "num_layers": 1, "num_heads": 1,
         "num_negatives": 64, "dropout": 0.1}
TRAIN = {"epochs": EPOCHS, "batch_size": 64, "lr": 2e-3, "seed": 7}
TOL = 1e-5


@pytest.fixture(scope="module")
def lake_config(ml100k_copy, tmp_path_factory) -> PreciseConfig:
    return ml100k_copy(tmp_path_factory.mktemp("root"),
                       training={"model": MODEL, "universal": TRAIN, "num_workers": 1, "cpus_per_worker": 0.5,
                                 "max_failures": 2})


@pytest.fixture(scope="module")
def reference_run(lake_config, tmp_path_factory):
    """The uninterrupted Ray Train run (1 worker) both tests compare against."""
    from precise.train.ray_job import run_training

    return run_training(lake_config, "universal", full=True,
                        storage_path=str(tmp_path_factory.mktemp("ref_results")))


def _assert_finite(metrics: dict) -> None:
    for key in ("loss", "val_ndcg_at_10", "val_recall_at_10"):
        assert math.isfinite(metrics[key]), (key, metrics)


def _train_workers(head: RayHead) -> list[psutil.Process]:
    """RayTrainWorker processes of *this* test cluster only: descendants of its `ray start`
    process (other Ray clusters may run on the same machine)."""
    root = recorded_process(head.pid_path)
    assert root is not None, "the test Ray head is not running"
    found = []
    for proc in root.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class _Killer(threading.Thread):
    """Waits for a persisted checkpoint of epoch >= `after_epoch`, then SIGKILLs a train worker."""

    def __init__(self, head: RayHead, storage: Path, after_epoch: int, timeout: float = 600.0) -> None:
        super().__init__(daemon=True)
        self.head, self.storage, self.after_epoch, self.timeout = head, storage, after_epoch, timeout
        self.killed: list[int] = []  # pids
        self.seen_epoch = 0  # newest checkpoint epoch when the kill happened
        self.stop = threading.Event()

    def newest_checkpoint_epoch(self) -> int:
        epochs = [0]
        for path in glob.glob(str(self.storage / "**" / "progress.json"), recursive=True):
            try:
                epochs.append(json.loads(Path(path).read_text())["epoch"])
            except (OSError, ValueError, KeyError):
                continue  # still being written
        return max(epochs)

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            epoch = self.newest_checkpoint_epoch()
            if epoch >= self.after_epoch:
                for proc in _train_workers(self.head):
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                        self.killed.append(proc.pid)
                    except ProcessLookupError:
                        continue
                if self.killed:
                    self.seen_epoch = epoch
                    return
            time.sleep(0.1)


def test_killed_worker_resumes_from_last_checkpoint(lake_config, reference_run, ray_head, tmp_path):
    from precise.train.ray_job import run_training

    storage = tmp_path / "ray_results"
    # Kill once epoch 3 is persisted: Ray Train registers a reported checkpoint when its controller
    # next polls the workers (every 2 s), so by then epoch 1's has surely been registered.
    killer = _Killer(ray_head, storage, after_epoch=3)
    killer.start()
    try:
        run = run_training(lake_config, "universal", full=True, storage_path=str(storage))
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    assert killer.killed, "no RayTrainWorker was killed (the run ended before a checkpoint of epoch 3?)"
    assert EPOCHS > killer.seen_epoch >= 3, killer.seen_epoch

    metrics = run.metrics
    # The restarted worker group loaded a checkpoint (an uninterrupted run reports 0), at most the
    # newest one persisted when the worker died (that one may not have been registered yet).
    assert 1 <= metrics["resumed_from_epoch"] <= killer.seen_epoch, (metrics, killer.seen_epoch)
    assert reference_run.metrics["resumed_from_epoch"] == 0
    assert metrics["epoch"] == EPOCHS
    _assert_finite(metrics)
    _assert_finite(reference_run.metrics)
    ref = reference_run.metrics
    assert metrics["best_epoch"] == ref["best_epoch"], (metrics, ref)
    assert metrics["val_ndcg_at_10"] == pytest.approx(ref["val_ndcg_at_10"], abs=TOL), (metrics, ref)
    assert metrics["loss"] == pytest.approx(ref["loss"], abs=TOL), (metrics, ref)
    history = {r["epoch"]: r for r in run.version.metadata["history"]}
    ref_history = {r["epoch"]: r for r in reference_run.version.metadata["history"]}
    assert sorted(history) == sorted(ref_history) == list(range(1, EPOCHS + 1))
    for epoch, record in ref_history.items():
        assert history[epoch]["loss"] == pytest.approx(record["loss"], abs=TOL), epoch
    assert metrics["val_ndcg_at_10"] > 0.025, metrics  # it learned (untrained: ~0.003, epoch 1: ~0.015)


def test_failure_budget_spent_is_a_training_error(lake_config, ray_head, tmp_path):
    """With `max_failures: 0` a killed worker ends the job with a TrainingError (what the job
    entrypoints report), not a restart and not a Ray exception type."""
    from precise.train.ray_job import TrainingError, run_training

    config = lake_config.model_copy(
        update={"training": lake_config.training.model_copy(update={"max_failures": 0})})
    storage = tmp_path / "ray_results"
    killer = _Killer(ray_head, storage, after_epoch=1)
    killer.start()
    try:
        with pytest.raises(TrainingError, match="universal training failed"):
            run_training(config, "universal", full=True, storage_path=str(storage))
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    assert killer.killed
