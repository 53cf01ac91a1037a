"""Replay a dataset into Kafka in event-time order (resumable, no duplicates).

    python jobs/replay.py --config configs/ml100k.yaml [--dataset ml-1m] [--speed 86400]
"""

from __future__ import annotations

import sys

from _common import run_job
from precise.config import PreciseConfig
from precise.data import SyntheticConfig, generate_synthetic, load_movielens
from precise.events.replay import replay


def load_dataset(config: PreciseConfig, name: str):  # noqa: ANN201 - EventDataset
    if name == "synthetic":
        return generate_synthetic(SyntheticConfig(**config.replay.synthetic))
    return load_movielens(name)


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--dataset", help="ml-100k | ml-1m | synthetic (overrides replay.dataset)")
        parser.add_argument("--speed", type=float, help="event-time seconds per wall second (default: max)")
        parser.add_argument("--no-progress", action="store_true")

    def body(config, args):  # noqa: ANN001, ANN202
        dataset = load_dataset(config, args.dataset or config.replay.dataset)
        speed = args.speed if args.speed is not None else config.replay.speed
        result = replay(dataset, config.kafka, speed=speed, progress=not args.no_progress)
        return {**result.__dict__, "events_per_s": round(result.events_per_s, 1)}

    return run_job(__doc__, arguments, body, argv)


if __name__ == "__main__":
    sys.exit(main())
