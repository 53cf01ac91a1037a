"""Universal training (causal Transformer, next-item prediction) as a Ray Train job.

    ray job submit --working-dir . -- python jobs/universal.py --config configs/ml100k.yaml

Incremental by default: continues from the LATEST universal version (new items appended to its
vocabulary) on the users with events since it; `--full` trains from scratch on everything.
Registers the result as models/universal/<version> with its lineage and prints a JSON summary.
"""

from __future__ import annotations

import sys

from _common import run_job
from precise.store.registry import RegistryError
from precise.train.ray_job import TrainingError, TrainingFailed, run_training


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--full", action="store_true", help="train from scratch on all sequences")
        parser.add_argument("--workers", type=int, help="Ray Train workers (overrides training.num_workers)")

    def body(config, args):  # noqa: ANN001, ANN202
        return run_training(config, "universal", full=args.full, num_workers=args.workers).summary()

    return run_job(__doc__, arguments, body, argv, bad_input=(TrainingError, RegistryError),
                   failures=(TrainingFailed,))


if __name__ == "__main__":
    sys.exit(main())
