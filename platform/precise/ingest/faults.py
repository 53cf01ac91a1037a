"""Test-only crash points of the ingest job, armed by an environment variable.

    PRECISE_INGEST_CRASH_AT=<point>[:<n>]   SIGKILL this process at <point> of its n-th batch with data

Points, in the order a batch reaches them: `before_write` (records read and validated, nothing
written), `mid_write` (right after the first lake file), `before_ledger` (all data written, ledger
not yet), `after_ledger` (committed, before the job records it). SIGKILL gives no chance to clean up,
exactly like a node loss. Unset in production: then every `hit` is a no-op.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "PRECISE_INGEST_CRASH_AT"
POINTS = ("before_write", "mid_write", "before_ledger", "after_ledger")


class Faults:
    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(CRASH_ENV, "") if spec is None else spec
        self.point: str | None = None
        self.target = 1
        self.batch = 0
        if spec:
            point, _, n = spec.partition(":")
            if point not in POINTS or (n and not n.isdigit()):
                raise ValueError(f"{CRASH_ENV}={spec!r}: expected one of {list(POINTS)}, optionally ':<batch number>'")
            self.point, self.target = point, int(n or 1)

    def next_batch(self) -> None:
        self.batch += 1

    def hit(self, point: str) -> None:
        if point == self.point and self.batch == self.target:
            os.kill(os.getpid(), signal.SIGKILL)
