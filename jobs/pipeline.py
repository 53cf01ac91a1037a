"""The orchestrator: per event-time cycle, ingest -> universal -> targeted (warm-started) -> publish.

    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/ml100k.yaml
    python jobs/pipeline.py --config configs/synthetic.yaml --follow      # keep polling Kafka
    python jobs/pipeline.py --config configs/ml100k.yaml --mode once      # figure 4a baseline

Writes one JSON report per cycle under <storage root>/pipeline/<mode>/cycles/ and prints a summary.
SIGTERM/SIGINT stop it after the step in hand; a restart continues with the next cycle.
"""

from __future__ import annotations

import signal
import sys
import threading

from _common import run_job
from precise.ingest.batch import LakeError
from precise.pipeline.orchestrator import Pipeline
from precise.predict.job import PredictError
from precise.store.registry import RegistryError
from precise.store.snapshots import SnapshotError
from precise.train.ray_job import TrainingError, TrainingFailed


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--follow", action="store_true", help="keep polling for new events until stopped")
        parser.add_argument("--mode", choices=["periodic", "once"], help="overrides pipeline.mode")
        parser.add_argument("--max-cycles", type=int, help="overrides pipeline.max_cycles")

    def body(config, args):  # noqa: ANN001, ANN202
        if args.mode:
            config.pipeline.mode = args.mode
        if args.max_cycles:
            config.pipeline.max_cycles = args.max_cycles
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        return Pipeline(config, stop=stop).run(follow=args.follow)

    return run_job(__doc__, arguments, body, argv,
                   bad_input=(TrainingError, RegistryError, PredictError, SnapshotError),
                   failures=(TrainingFailed, LakeError))


if __name__ == "__main__":
    sys.exit(main())
