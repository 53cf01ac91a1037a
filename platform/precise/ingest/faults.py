"""Test-only faults of the ingest job, armed by environment variables.

    PRECISE_INGEST_CRASH_AT=<point>[:<n>]   SIGKILL this process at <point> of its n-th batch with data
    PRECISE_INGEST_STALL_AT=<point>[:<n>]   SIGSTOP it there instead: a freeze (a VM pause, a stuck
                                            mount) that goes on where it stopped after SIGCONT
    PRECISE_INGEST_NO_FLOCK=1               skip the lake's flock, as two nodes on a shared volume
                                            where it does not hold (the writer lease must fence)
    PRECISE_INGEST_LEASE_RACE_S=<s>         wait between reading the writer lease and taking it, so
                                            two starting jobs race for the same generation

Points, in the order a batch reaches them: `before_write` (records read and validated, nothing
written), `mid_write` (right after the first lake file), `before_ledger` (all data written, ledger
not yet), `after_ledger` (committed, before the job records it). SIGKILL gives no chance to clean up,
exactly like a node loss. Unset in production: then every `hit` is a no-op.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "PRECISE_INGEST_CRASH_AT"
STALL_ENV = "PRECISE_INGEST_STALL_AT"
NO_FLOCK_ENV = "PRECISE_INGEST_NO_FLOCK"
LEASE_RACE_ENV = "PRECISE_INGEST_LEASE_RACE_S"
POINTS = ("before_write", "mid_write", "before_ledger", "after_ledger")


class Faults:
    def __init__(self, spec: str | None = None) -> None:
        self.signal = signal.SIGKILL
        if spec is None:
            spec = os.environ.get(CRASH_ENV, "")
            if not spec and os.environ.get(STALL_ENV):
                spec, self.signal = os.environ[STALL_ENV], signal.SIGSTOP
        self.point: str | None = None
        self.target = 1
        self.batch = 0
        self.flock = os.environ.get(NO_FLOCK_ENV, "") not in ("1", "true")
        self.lease_race_s = float(os.environ.get(LEASE_RACE_ENV) or 0)
        if spec:
            point, _, n = spec.partition(":")
            if point not in POINTS or (n and not n.isdigit()):
                raise ValueError(f"{CRASH_ENV}={spec!r}: expected one of {list(POINTS)}, optionally ':<batch number>'")
            self.point, self.target = point, int(n or 1)

    def next_batch(self) -> None:
        self.batch += 1

    def hit(self, point: str) -> None:
        if point == self.point and self.batch == self.target:
            os.kill(os.getpid(), self.signal)
