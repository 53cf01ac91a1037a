"""Replay a dataset into Kafka in event-time order (resumable, no duplicates).

    python jobs/replay.py --config configs/ml100k.yaml [--dataset ml-1m] [--speed 86400]
"""

from __future__ import annotations

import argparse
import json
import sys

from precise.config import ConfigError, PreciseConfig, load_config
from precise.data import SyntheticConfig, generate_synthetic, load_movielens
from precise.events.replay import replay


def load_dataset(config: PreciseConfig, name: str):  # noqa: ANN201 - EventDataset
    if name == "synthetic":
        return generate_synthetic(SyntheticConfig(**config.replay.synthetic))
    return load_movielens(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (kafka, replay sections)")
    parser.add_argument("--dataset", help="ml-100k | ml-1m | synthetic (overrides replay.dataset)")
    parser.add_argument("--speed", type=float, help="event-time seconds per wall second (default: max)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap_servers)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.bootstrap:
            config.kafka.bootstrap_servers = args.bootstrap
        dataset = load_dataset(config, args.dataset or config.replay.dataset)
        speed = args.speed if args.speed is not None else config.replay.speed
        result = replay(dataset, config.kafka, speed=speed, progress=not args.no_progress)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {**result.__dict__, "events_per_s": round(result.events_per_s, 1)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
