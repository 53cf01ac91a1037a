"""The lake's writer lease: one ingest job writes a lake, also where `flock` does not hold.

`flock` (Files.lock) holds only for processes on one machine's local disk; on an object store or a
volume shared between nodes two jobs could both "hold" it, and the second one's start-up clean-up
would delete the first one's in-flight files. The lease works on every store the lake supports,
because it is built on create-if-absent (`Files.create`), not on a pause:

- each holder has a generation, and generation G is the file `lake/_writer/{G}.json`, created
  only if absent: of two jobs that want the lake at once, exactly one creates G + 1 and the other
  refuses (`LeaseHeld`) before it deletes or writes anything;
- a job takes the lake only when the newest generation's heartbeat is older than
  `ingest.writer_lease_s` (a crashed job's lease expires; a live one's never does: a thread
  rewrites its own file every third of it);
- a holder is fenced as soon as generation G + 1 exists: it checks before writing a batch and
  before committing it, and its commit is itself conditional (`lake.save_ledger` creates the next
  ledger version, and a new holder commits a version when it starts), so a writer that stalled
  past its lease never commits.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

from precise.store.files import Files
from precise.store.lake import WriterFenced

_GENERATION = re.compile(r"^(\d{12})\.json$")
KEEP = 3  # generation files kept (older ones are deleted by the next holder)


class LeaseHeld(WriterFenced):
    """Another live writer holds the lake (or took it over from this one)."""


class WriterLease:
    def __init__(self, storage: Files, ttl_s: float, race_window_s: float = 0.0) -> None:
        """`race_window_s`: a test hook that waits between reading the newest generation and
        creating the next one, to make two starting jobs race for it."""
        self.storage = storage
        self.folder = storage.path("lake", "_writer")
        self.legacy = storage.path("lake", "_writer.json")  # the lease of lakes before generation files
        self.ttl_s = ttl_s
        self.race_window_s = race_window_s
        self.owner = uuid.uuid4().hex
        self.generation = 0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, generation: int) -> str:
        return f"{self.folder}/{generation:012d}.json"

    def _record(self, path: str) -> dict[str, Any] | None:
        data = self.storage.read_bytes(path)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None  # whole-file writes only; treat garbage as no lease

    def newest(self) -> tuple[int, dict[str, Any] | None]:
        """(generation, record) of the newest holder; (0, None) on a new lake."""
        names = [_GENERATION.match(p.rsplit("/", 1)[-1]) for p in self.storage.list_files(self.folder, False)]
        generations = sorted(int(m[1]) for m in names if m)
        if generations:
            return generations[-1], self._record(self.path(generations[-1]))
        legacy = self._record(self.legacy)
        return (int(legacy.get("generation", 0)), legacy) if legacy else (0, None)

    def _write(self, heartbeat_ms: int | None = None) -> bytes:
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                  "generation": self.generation,
                  "heartbeat_ms": int(time.time() * 1000) if heartbeat_ms is None else heartbeat_ms}
        return json.dumps(record).encode()

    def acquire(self, same_host_is_stale: bool = False, floor: int = 0) -> int:
        """Take the lease (raise LeaseHeld if a live writer has it); returns the new generation.

        `same_host_is_stale`: the caller holds the lake's flock on this machine, so a lease written
        from this host belongs to a dead process (a killed job restarts at once, without waiting).
        `floor`: the generation that committed the ledger (the new one is above it).
        """
        generation, current = self.newest()
        stale = same_host_is_stale and current is not None and current.get("host") == socket.gethostname()
        if current is not None and current.get("owner") != self.owner and not stale:
            age_s = time.time() - current.get("heartbeat_ms", 0) / 1000
            if age_s < self.ttl_s:
                raise LeaseHeld(f"another ingest job (host {current.get('host')}, pid {current.get('pid')}, "
                                f"generation {current.get('generation')}) writes the lake at {self.storage.uri}: "
                                f"its lease was renewed {age_s:.0f} s ago (expires after "
                                f"ingest.writer_lease_s = {self.ttl_s:g} s); one writer per lake")
        if self.race_window_s:
            time.sleep(self.race_window_s)
        self.generation = max(generation, floor) + 1
        if not self.storage.create(self.path(self.generation), self._write()):
            taker = self._record(self.path(self.generation)) or {}
            self.lost = (f"fenced: another ingest job (host {taker.get('host')}, pid {taker.get('pid')}) took "
                         f"generation {self.generation} of the writer lease of the lake at {self.storage.uri} "
                         f"at the same moment; one writer per lake, this job stops without writing")
            raise LeaseHeld(self.lost)
        for old in range(max(1, self.generation - KEEP - 5), self.generation - KEEP + 1):
            self.storage.delete(self.path(old))
        self._thread = threading.Thread(target=self._renew, daemon=True, name="lake-lease")
        self._thread.start()
        return self.generation

    def check(self, ledger_generation: int | None = None) -> None:
        """Raise LeaseHeld unless this writer still owns the lake."""
        if self.lost is not None:
            raise LeaseHeld(self.lost)
        if self.storage.exists(self.path(self.generation + 1)):
            taker = self._record(self.path(self.generation + 1)) or {}
            self.lost = (f"fenced: the lake's writer lease was taken over by generation {self.generation + 1} "
                         f"(host {taker.get('host')}, pid {taker.get('pid')}); this job (generation "
                         f"{self.generation}) stops writing the lake at {self.storage.uri}")
            raise LeaseHeld(self.lost)
        if ledger_generation is not None and ledger_generation > self.generation:
            self.lost = (f"fenced: the ledger was committed by writer generation {ledger_generation}, "
                         f"this job is generation {self.generation}")
            raise LeaseHeld(self.lost)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.check()
                self.storage.write_bytes(self.path(self.generation), self._write())
            except LeaseHeld:
                return
            except Exception:  # a store hiccup: try again next period (the lease has 3 periods)
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.generation and self.lost is None and not self.storage.exists(self.path(self.generation + 1)):
            # expired at once; the generation stays for the next taker
            self.storage.write_bytes(self.path(self.generation), self._write(heartbeat_ms=0))
