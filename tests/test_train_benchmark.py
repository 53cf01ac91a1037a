"""benchmarks/train.py's samples/s: summed samples over summed seconds of every epoch after the
first, from the history `recipe.fit` writes (the same records for the plain loop and a Ray job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_quality_benchmark import bench

REPO = Path(__file__).resolve().parents[1]


def test_steady_samples_per_s_skips_the_warm_up_epoch_and_validation_records() -> None:
    history = [
        {"epoch": 0, "val_ndcg_at_10": 0.01},  # a warm start's validation of its parent: no training
        {"epoch": 1, "samples": 900, "seconds": 3.0, "samples_per_s": 300.0},  # warm-up, not counted
        {"epoch": 2, "samples": 900, "seconds": 1.0, "samples_per_s": 900.0},
        {"epoch": 3, "samples": 900, "seconds": 2.0, "samples_per_s": 450.0},
    ]
    # 1,800 samples in 3 s, not the mean of the per-epoch rates (675)
    assert bench("train").steady_samples_per_s(history) == pytest.approx(600.0)


def test_steady_samples_per_s_needs_an_epoch_after_the_warm_up() -> None:
    with pytest.raises(ValueError, match="at least two epochs"):
        bench("train").steady_samples_per_s([{"epoch": 1, "samples": 9, "seconds": 1.0, "samples_per_s": 9.0}])


def test_one_epoch_is_refused_before_anything_starts() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train.py"), "--quick", "--epochs", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--epochs must be >= 2" in done.stderr
