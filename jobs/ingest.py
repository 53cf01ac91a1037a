"""Ingest Kafka into the event lake with Ray Data (exactly once), then build user sequences.

    python jobs/ingest.py --config configs/ml100k.yaml --once       # up to the current end, then exit
    python jobs/ingest.py --config configs/ml100k.yaml --interval 5 # continuous; SIGTERM/SIGINT stop it
    ray job submit --working-dir . -- python jobs/ingest.py --config configs/ml100k.yaml

Connects to the Ray cluster in RAY_ADDRESS (set by `ray job submit`, or `source
.precise/stack/stack.env`), else starts a local Ray. Prints one JSON summary line at exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

# `ray job submit --working-dir .` runs this file from a copy of the repo: import that copy's library.
_PLATFORM = Path(__file__).resolve().parents[1] / "platform"
if (_PLATFORM / "precise").is_dir() and str(_PLATFORM) not in sys.path:
    sys.path.insert(0, str(_PLATFORM))

from precise.config import ConfigError, load_config  # noqa: E402
from precise.ingest.batch import LakeError  # noqa: E402
from precise.ingest.job import IngestJob, connect_ray, install_stop_handlers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (kafka, storage, ingest, sequences sections)")
    parser.add_argument("--once", action="store_true", help="ingest up to the current end offsets, then exit")
    parser.add_argument("--interval", type=float, help="continuous mode: seconds between polls when caught up")
    parser.add_argument("--root", help="storage root (overrides storage.root)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap_servers)")
    parser.add_argument("--no-sequences", action="store_true", help="do not build sequences")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        if args.root:
            config.storage.root = args.root
        if args.bootstrap:
            config.kafka.bootstrap_servers = args.bootstrap
        if args.interval is not None and args.interval <= 0:
            raise ConfigError("--interval must be > 0 seconds")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    connect_ray()
    stop = threading.Event()
    install_stop_handlers(stop)
    job = IngestJob(config, stop=stop, build_sequences=False if args.no_sequences else None)
    try:
        summary = job.run_once() if args.once else job.run_continuous(args.interval)
    except (LakeError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
