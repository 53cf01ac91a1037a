"""The lake's writer lease: one ingest job writes a lake, also where `flock` does not hold.

`flock` (Files.lock) holds only for processes on one machine's local disk; on an object store or a
volume shared between nodes two jobs could both "hold" it, and the second one's start-up clean-up
would delete the first one's in-flight files. The lease is a file, `lake/_writer.json`, that works
on every store the lake supports:

- a job takes it only when no other owner's heartbeat is younger than `ingest.writer_lease_s`
  (a crashed job's lease expires; a live one's never does: a thread renews it every third of it);
- taking it bumps a generation, written and then read back after a pause: of two jobs that took it
  at once, the one whose write landed last owns it, the other sees that and refuses before it
  deletes or writes anything;
- before every ledger commit the owner checks the lease is still its own and that the ledger on
  disk was not committed by a later generation; if not, it stops (a fenced writer never commits).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from precise.store.files import Files


class LeaseHeld(RuntimeError):
    """Another live writer holds the lake (or took it over from this one)."""


class WriterLease:
    def __init__(self, storage: Files, ttl_s: float, settle_s: float = 1.0) -> None:
        self.storage = storage
        self.path = storage.path("lake", "_writer.json")
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.owner = uuid.uuid4().hex
        self.generation = 0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        data = self.storage.read_bytes(self.path)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None  # a torn write cannot happen (atomic replace); treat garbage as no lease

    def _write(self, heartbeat_ms: int | None = None) -> None:
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                  "generation": self.generation,
                  "heartbeat_ms": int(time.time() * 1000) if heartbeat_ms is None else heartbeat_ms}
        self.storage.write_bytes(self.path, json.dumps(record).encode())

    def acquire(self, same_host_is_stale: bool = False, floor: int = 0) -> int:
        """Take the lease (raise LeaseHeld if a live writer has it); returns the new generation.

        `same_host_is_stale`: the caller holds the lake's flock on this machine, so a lease written
        from this host belongs to a dead process (a killed job restarts at once, without waiting).
        `floor`: the generation that committed the ledger (the new one is above it).
        """
        current = self.read()
        stale = same_host_is_stale and current is not None and current.get("host") == socket.gethostname()
        if current is not None and current.get("owner") != self.owner and not stale:
            age_s = time.time() - current.get("heartbeat_ms", 0) / 1000
            if age_s < self.ttl_s:
                raise LeaseHeld(f"another ingest job (host {current.get('host')}, pid {current.get('pid')}, "
                                f"generation {current.get('generation')}) writes the lake at {self.storage.uri}: "
                                f"its lease was renewed {age_s:.0f} s ago (expires after "
                                f"ingest.writer_lease_s = {self.ttl_s:g} s); one writer per lake")
        self.generation = max(int((current or {}).get("generation", 0)), floor) + 1
        self._write()
        time.sleep(self.settle_s)  # a concurrent taker's write lands in this window: read back
        self.check()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="lake-lease")
        self._thread.start()
        return self.generation

    def check(self, ledger_generation: int | None = None) -> None:
        """Raise LeaseHeld unless this writer still owns the lake."""
        if self.lost is not None:
            raise LeaseHeld(self.lost)
        current = self.read()
        if current is None or current.get("owner") != self.owner:
            self.lost = (f"the lake's writer lease was taken over (now {current}); this job stops "
                         f"writing the lake at {self.storage.uri}")
            raise LeaseHeld(self.lost)
        if ledger_generation is not None and ledger_generation > self.generation:
            self.lost = (f"the ledger was committed by writer generation {ledger_generation}, "
                         f"this job is generation {self.generation}: fenced")
            raise LeaseHeld(self.lost)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.check()
                self._write()
            except LeaseHeld:
                return
            except Exception:  # a store hiccup: try again next period (the lease has 3 periods)
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        current = self.read()
        if current is not None and current.get("owner") == self.owner:
            self._write(heartbeat_ms=0)  # expired at once; the generation stays for the next taker
