"""How a CLI verb reports an expected failure: one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Verb = Callable[[argparse.Namespace], int]


def failing_with(*errors: type[Exception]) -> Callable[[Verb], Verb]:
    """Wrap a verb so that the store errors it expects become `error: ...` and exit code 1."""

    def wrap(verb: Verb) -> Verb:
        def run(args: argparse.Namespace) -> int:
            try:
                return verb(args)
            except errors as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1

        return run

    return wrap
