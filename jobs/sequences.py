"""Build (incrementally) the per-user sequences from the event lake; the ingest job also does this.

    python jobs/sequences.py --config configs/ml100k.yaml [--full]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

_PLATFORM = Path(__file__).resolve().parents[1] / "platform"
if (_PLATFORM / "precise").is_dir() and str(_PLATFORM) not in sys.path:
    sys.path.insert(0, str(_PLATFORM))

from precise.config import ConfigError, load_config  # noqa: E402
from precise.ingest.job import connect_ray  # noqa: E402
from precise.ingest.sequences import SequenceBuilder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (storage, sequences sections)")
    parser.add_argument("--root", help="storage root (overrides storage.root)")
    parser.add_argument("--full", action="store_true", help="rebuild every user, not only the touched ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.root:
        config.storage.root = args.root
    connect_ray()
    results = SequenceBuilder(config).build(full=args.full)
    print(json.dumps([asdict(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
