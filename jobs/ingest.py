"""Ingest Kafka into the event lake with Ray Data (exactly once), then build user sequences.

    python jobs/ingest.py --config configs/ml100k.yaml --once       # up to the current end, then exit
    python jobs/ingest.py --config configs/ml100k.yaml --interval 5 # continuous; SIGTERM/SIGINT stop it
    ray job submit --working-dir . -- python jobs/ingest.py --config configs/ml100k.yaml

Connects to the Ray cluster in RAY_ADDRESS (set by `ray job submit`, or `source
.precise/stack/stack.env`), else starts a local Ray. Prints one JSON summary line at exit.
"""

from __future__ import annotations

import sys
import threading

from _common import run_job
from precise.config import ConfigError
from precise.ingest.batch import LakeError
from precise.ingest.job import IngestJob, connect_ray, install_stop_handlers


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--once", action="store_true", help="ingest up to the current end offsets, then exit")
        parser.add_argument("--interval", type=float, help="continuous mode: seconds between polls when caught up")
        parser.add_argument("--no-sequences", action="store_true", help="do not build sequences")

    def body(config, args):  # noqa: ANN001, ANN202
        if args.interval is not None and args.interval <= 0:
            raise ConfigError("--interval must be > 0 seconds")
        connect_ray()
        stop = threading.Event()
        install_stop_handlers(stop)
        job = IngestJob(config, stop=stop, build_sequences=False if args.no_sequences else None)
        return job.run_once() if args.once else job.run_continuous(args.interval)

    # a broker or Ray outage that outlasts the job's retries ends it with exit 1, nothing committed twice
    return run_job(__doc__, arguments, body, argv, failures=(LakeError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
