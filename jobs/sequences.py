"""Build (incrementally) the per-user sequences from the event lake; the ingest job also does this.

    python jobs/sequences.py --config configs/ml100k.yaml [--full]
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from _common import run_job
from precise.ingest.job import connect_ray
from precise.ingest.sequences import SequenceBuilder


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--full", action="store_true", help="rebuild every user, not only the touched ones")

    def body(config, args):  # noqa: ANN001, ANN202
        connect_ray()
        return [asdict(result) for result in SequenceBuilder(config).build(full=args.full)]

    return run_job(__doc__, arguments, body, argv)


if __name__ == "__main__":
    sys.exit(main())
