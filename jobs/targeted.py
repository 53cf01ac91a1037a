"""Targeted training (bidirectional Transformer + MLP, BPR loss) as a Ray Train job.

    ray job submit --working-dir . -- python jobs/targeted.py --config configs/ml100k.yaml

Warm-starts every shared parameter from the LATEST universal version (periodical warm-up: run it
after each universal cycle), trains on the target sequences (`training.target`) and registers
models/targeted/<task>/<version> with `warm_started_from`.
"""

from __future__ import annotations

import sys

from _common import run_job
from precise.store.registry import RegistryError
from precise.train.ray_job import TrainingError, TrainingFailed, run_training


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--workers", type=int, help="Ray Train workers (overrides training.num_workers)")

    def body(config, args):  # noqa: ANN001, ANN202
        return run_training(config, "targeted", num_workers=args.workers).summary()

    return run_job(__doc__, arguments, body, argv, bad_input=(TrainingError, RegistryError),
                   failures=(TrainingFailed,))


if __name__ == "__main__":
    sys.exit(main())
