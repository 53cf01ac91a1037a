"""The lake's writer lease (precise.store.lease) on a real lake folder, as on a volume shared by two
nodes, where flock does not hold: a second writer refuses while the first is alive, takes over once
its lease expired, and the fenced first writer can no longer commit."""

from __future__ import annotations

import time

import pytest

from precise.store.files import Files
from precise.store.lease import LeaseHeld, WriterLease


def test_a_second_writer_refuses_a_live_lease_and_takes_over_an_expired_one(tmp_path):
    storage = Files(str(tmp_path))
    first = WriterLease(storage, ttl_s=1.5)
    assert first.acquire() == 1
    try:
        second = WriterLease(storage, ttl_s=1.5)
        time.sleep(2.0)  # past one ttl: the first job's thread renewed it meanwhile
        with pytest.raises(LeaseHeld, match="another ingest job"):
            second.acquire()  # a node of its own: the same-host shortcut does not apply
        first.check()
    finally:
        first._stop.set()  # the first job hangs (no renewals) ...
        first._thread.join(5)
    time.sleep(1.6)  # ... until its lease expires
    assert second.acquire() == 2
    with pytest.raises(LeaseHeld, match="taken over"):
        first.check()  # fenced: the first job never commits again
    with pytest.raises(LeaseHeld):
        second.check(ledger_generation=3)  # a ledger committed by a later generation fences too
    second.release()


def test_released_and_same_host_leases_are_taken_at_once_with_a_higher_generation(tmp_path):
    storage = Files(str(tmp_path))
    first = WriterLease(storage, ttl_s=60)
    first.acquire()
    first._stop.set()  # killed: no release, the lease looks alive for 60 s
    # a restart on this host holds the flock, so the lease is a dead process's
    restarted = WriterLease(storage, ttl_s=60)
    assert restarted.acquire(same_host_is_stale=True) == 2
    restarted.release()
    after = WriterLease(storage, ttl_s=60)
    assert after.acquire(floor=7) == 8  # above the generation that committed the ledger
    after.release()
