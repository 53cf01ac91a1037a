"""Shared start-up of the job entrypoints: the library path, the common flags, config loading,
logging and the two error exits.

Every job takes `--config` (a YAML file; without it the defaults and `PRECISE_*` variables),
`--root` (storage.root) and `--bootstrap` (kafka.bootstrap_servers), and prints its summary as one
JSON line on stdout. Exit codes: 0 done; 2 bad input (config, arguments, missing data) with
`error: ...` on stderr; 1 a run that failed after starting (`failures` of the job); anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `ray job submit --working-dir .` runs a job from a copy of the repository: import that copy's
# library, not whatever version is installed on the node.
_PLATFORM = Path(__file__).resolve().parents[1] / "platform"
if (_PLATFORM / "precise").is_dir() and str(_PLATFORM) not in sys.path:
    sys.path.insert(0, str(_PLATFORM))

from precise.config import ConfigError, PreciseConfig, load_config  # noqa: E402

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
BAD_INPUT: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


def run_job(description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            body: Callable[[PreciseConfig, argparse.Namespace], Any], argv: list[str] | None = None,
            bad_input: tuple[type[BaseException], ...] = (),
            failures: tuple[type[BaseException], ...] = ()) -> int:
    """Parse the common flags and the job's own, run `body`, print what it returns as JSON.

    `bad_input`: the job's own exception types that mean bad input (exit 2, like ConfigError);
    `failures`: those that mean the run failed (exit 1)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (configs/<file>.yaml); without it, the defaults")
    parser.add_argument("--root", help="storage root (overrides storage.root)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides kafka.bootstrap_servers)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python's per-connection INFO lines
    try:
        config = load_config(args.config)
        if args.root:
            config.storage.root = args.root
        if args.bootstrap:
            config.kafka.bootstrap_servers = args.bootstrap
        summary = body(config, args)
    except failures as exc:  # first: a failure type may subclass a bad-input one
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (*BAD_INPUT, *bad_input) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary, default=str))
    return 0
