"""Batch prediction: embed every catalogue item and every user, publish an embedding snapshot.

    python jobs/predict.py --config configs/ml1m.yaml [--cycle items] [--task ml1m]
    ray job submit --working-dir . -- python jobs/predict.py --config configs/ml1m.yaml

`--cycle all` (daily) embeds items and users; `--cycle items` (hourly) embeds items and carries the
users of the LATEST snapshot over when the same model version made them. Prints one JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys

from precise.config import ConfigError, load_config
from precise.predict.embedder import EmbedderError
from precise.predict.job import PredictError, run_predict
from precise.predict.snapshot import SnapshotError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (storage, kafka, predict sections)")
    parser.add_argument("--cycle", choices=["all", "items"], default="all")
    parser.add_argument("--task", help="snapshot series to publish to (overrides predict.task)")
    parser.add_argument("--root", help="storage root (overrides storage.root)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap_servers)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.task:
            config.predict.task = args.task
        if args.root:
            config.storage.root = args.root
        if args.bootstrap:
            config.kafka.bootstrap_servers = args.bootstrap
        result = run_predict(config, cycle=args.cycle)
    except (ConfigError, PredictError, SnapshotError, EmbedderError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
