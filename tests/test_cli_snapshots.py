"""`precise snapshots ...` against a real snapshot series: pin / rollback / unpin move what is served."""

from __future__ import annotations

import json

from precise.cli import main
from precise.predict.demo import publish_random_snapshot
from precise.store.snapshots import SnapshotStore


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_list_pin_rollback_unpin(tmp_path, capsys):
    for seed in range(3):
        publish_random_snapshot(tmp_path, "t", users=2, items=5, dim=4, seed=seed, model_version=f"m{seed}")
    store = SnapshotStore(tmp_path, "t")
    base = ["--root", str(tmp_path), "--task", "t", "--json"]

    rc, out, _ = _cli(capsys, "snapshots", "list", *base)
    listed = json.loads(out)
    assert rc == 0 and listed["served"] == "000003" and [r["version"] for r in listed["snapshots"]] == [
        "000001", "000002", "000003"]

    rc, out, _ = _cli(capsys, "snapshots", "rollback", *base)
    assert rc == 0 and json.loads(out)["served"] == "000002"
    assert store.served_version() == "000002" and store.latest_version() == "000003"  # LATEST untouched

    rc, out, _ = _cli(capsys, "snapshots", "rollback", *base)
    assert rc == 0 and store.served_version() == "000001"
    rc, _, err = _cli(capsys, "snapshots", "rollback", *base)
    assert rc == 1 and "no snapshot older" in err and store.served_version() == "000001"

    rc, out, _ = _cli(capsys, "snapshots", "show", "000002", *base)
    assert rc == 0 and json.loads(out)["model_version"] == "m1"

    rc, _, err = _cli(capsys, "snapshots", "pin", "000009", *base)
    assert rc == 1 and "no snapshot" in err and store.served_version() == "000001"  # bad pin changes nothing
    rc, _, _ = _cli(capsys, "snapshots", "pin", *base)
    assert rc == 2

    rc, out, _ = _cli(capsys, "snapshots", "unpin", *base)
    assert rc == 0 and store.served_version() == "000003" and store.pinned_version() is None
