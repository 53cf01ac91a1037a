"""Benchmarks need a broker: use PRECISE_KAFKA_BOOTSTRAP if given, else start a private one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from precise.stack import KafkaBroker
from precise.stack.process import free_port


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    existing = os.environ.get("PRECISE_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    with tempfile.TemporaryDirectory(prefix="precise-bench-") as tmp:
        broker = KafkaBroker(Path(tmp), port=free_port(), controller_port=free_port())
        broker.start()
        try:
            yield broker.bootstrap
        finally:
            broker.stop()
