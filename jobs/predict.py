"""Batch prediction: embed every catalogue item and every user, publish an embedding snapshot.

    python jobs/predict.py --config configs/ml1m.yaml [--cycle items|delta] [--task ml1m]
    ray job submit --working-dir . -- python jobs/predict.py --config configs/ml1m.yaml

`--cycle all` (daily) embeds items and users; `--cycle items` (hourly) embeds items and carries the
users of the LATEST snapshot over when the same model version made them (a full snapshot, index
rebuilt); `--cycle delta` is the orchestrator's item cycle: only the items new or changed since
the LATEST snapshot, with its model, published as an item delta (precise.predict.delta). Prints
one JSON summary.
"""

from __future__ import annotations

import sys

from _common import run_job
from precise.predict.embedder import EmbedderError
from precise.predict.job import PredictError, run_predict
from precise.store.snapshots import SnapshotError


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--cycle", choices=["all", "items", "delta"], default="all")
        parser.add_argument("--task", help="snapshot series to publish to (overrides predict.task)")

    def body(config, args):  # noqa: ANN001, ANN202
        if args.task:
            config.predict.task = args.task
        if args.cycle == "delta":
            from precise.predict.publish import publish_items

            summary = publish_items(config)
            if summary is None:
                raise PredictError(f"task {config.predict.task!r} has no snapshot yet: run --cycle all first")
            return summary
        return run_predict(config, cycle=args.cycle).summary()

    return run_job(__doc__, arguments, body, argv, bad_input=(PredictError, SnapshotError, EmbedderError))


if __name__ == "__main__":
    sys.exit(main())
