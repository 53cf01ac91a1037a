"""The lake's writer fence without a pause: create-if-absent (Files.create) on a local volume and on an
fsspec store, ledger versions committed by it (a second commit of the same version is refused), the
writer lease's generations taken by it, and a single-file ledger of an older lake read and migrated."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from precise.store.files import Files, NoExclusiveCreate
from precise.store.lake import LEDGER_KEEP, Layout, Ledger, LedgerConflict, load_ledger, save_ledger
from precise.store.lease import LeaseHeld, WriterLease


@pytest.fixture(params=["local", "memory"])
def storage(request, tmp_path) -> Files:
    return Files(str(tmp_path / "root") if request.param == "local" else f"memory://fence-{uuid.uuid4().hex}")


def test_create_if_absent_refuses_the_second_creator(storage):
    path = storage.path("lake", "_ledger", "000000000001.json")
    assert storage.create(path, b"first") is True
    assert storage.create(path, b"second") is False
    assert storage.read_bytes(path) == b"first"
    assert not storage.temp_files(storage.path("lake")) if storage.local else True


def test_create_if_absent_has_one_winner_among_racing_threads(storage):
    path = storage.path("race", "name")
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def racer(i: int) -> None:
        barrier.wait()
        if storage.create(path, str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and storage.read_bytes(path) == str(wins[0]).encode()


def test_a_store_without_exclusive_writes_is_refused_clearly():
    storage = Files(f"simplecache::memory://fence-{uuid.uuid4().hex}")
    with pytest.raises(NoExclusiveCreate, match="cannot create a file only if it is absent"):
        storage.create(storage.path("x"), b"1")


def test_two_writers_of_one_ledger_version_one_commits_the_other_is_fenced(storage):
    save_ledger(storage, Ledger(offsets={"ev": {0: 5}}, events_topic="ev"))
    a, b = load_ledger(storage), load_ledger(storage)
    assert a.version == b.version == 1
    a.offsets = {"ev": {0: 10}}
    save_ledger(storage, a)
    b.offsets = {"ev": {0: 12}}
    with pytest.raises(LedgerConflict, match="fenced: ledger version 2"):
        save_ledger(storage, b)
    latest = load_ledger(storage)
    assert latest.offsets == {"ev": {0: 10}} and latest.version == 2


def test_readers_find_the_newest_version_past_a_stale_or_missing_hint(storage):
    ledger = Ledger(events_topic="ev")
    for n in range(1, 4):
        ledger.offsets = {"ev": {0: n}}
        save_ledger(storage, ledger)
    layout = Layout(storage)
    storage.write_bytes(layout.ledger_hint, b"1")  # stale
    assert load_ledger(storage).offsets == {"ev": {0: 3}}
    storage.delete(layout.ledger_hint)  # missing: a listing
    assert load_ledger(storage).version == 3


def test_old_versions_are_pruned_and_the_newest_still_read(storage):
    ledger = Ledger(events_topic="ev")
    for n in range(LEDGER_KEEP + 3):
        ledger.offsets = {"ev": {0: n}}
        save_ledger(storage, ledger)
    layout = Layout(storage)
    assert not storage.exists(layout.ledger_version(1)) and storage.exists(layout.ledger_version(LEDGER_KEEP + 3))
    assert load_ledger(storage).offsets == {"ev": {0: LEDGER_KEEP + 2}}


def test_a_single_file_ledger_is_read_and_migrated_by_the_first_commit(storage):
    layout = Layout(storage)
    old = Ledger(offsets={"ev": {0: 7}}, events_topic="ev", batches=3)
    storage.write_bytes(layout.ledger, old.to_json())
    read = load_ledger(storage)
    assert read.offsets == {"ev": {0: 7}} and read.version == 0
    save_ledger(storage, read)
    assert storage.exists(layout.ledger_version(1))
    assert load_ledger(storage).batches == 3 and load_ledger(storage).version == 1


def test_lease_generations_one_winner_when_two_take_at_once(storage):
    first = WriterLease(storage, ttl_s=60, race_window_s=0.5)
    second = WriterLease(storage, ttl_s=60, race_window_s=0.5)
    results: dict[str, object] = {}

    def take(name: str, lease: WriterLease) -> None:
        try:
            results[name] = lease.acquire()
        except LeaseHeld as exc:
            results[name] = exc

    threads = [threading.Thread(target=take, args=item) for item in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v in results.values() if v == 1]
    losers = [v for v in results.values() if isinstance(v, LeaseHeld)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "fenced" in str(losers[0]) and "same moment" in str(losers[0])
    owner = first if results["a"] == 1 else second
    owner.check()
    record = json.loads(storage.read_bytes(owner.path(1)))
    assert record["owner"] == owner.owner
    owner.release()
