"""Shared start-up of the job entrypoints: config loading and the one error path."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from precise.config import ConfigError, PreciseConfig, load_config


def run_job(description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            body: Callable[[PreciseConfig, argparse.Namespace], dict[str, Any]],
            argv: list[str] | None = None) -> int:
    """Parse `--config` and the job's own flags, run `body`, print its summary as one JSON line.

    Expected failures (bad config, missing inputs) print `error: ...` and exit 2; nothing else is
    caught, so a real bug keeps its traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config (configs/<file>.yaml)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    from precise.registry import RegistryError
    from precise.train.ray_job import TrainingError

    try:
        config = load_config(args.config)
        summary = body(config, args)
    except (ConfigError, TrainingError, RegistryError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0
