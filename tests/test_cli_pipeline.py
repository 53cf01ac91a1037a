"""`precise pipeline status|rerun` on orchestrator records written through precise.store (the
acceptance test, tests/test_cli_acceptance.py, runs them after a real pipeline run)."""

from __future__ import annotations

import json

import yaml

from precise.cli import main
from precise.store.pipeline import PipelineRecords

DAY = 86_400_000
GATE = {"choice": "targeted", "published": "targeted/like/000002", "scores": {"universal": 0.1, "targeted": 0.2},
        "reason": "the targeted model scores higher", "metric": "ndcg_at_10", "cases": 50}


def test_status_and_rerun(tmp_path, capsys):
    records = PipelineRecords(tmp_path, "periodic")
    reports = [{"cycle": n, "boundary_ts": n * DAY, "gate": GATE, "universal": {"model": f"universal/00000{n}"},
                "targeted": {"model": f"targeted/like/00000{n}"}, "snapshot": {"version": f"00000{n}"},
                "seconds": 3.0} for n in (1, 2, 3)]
    records.save_state({"done_boundaries": [DAY, 2 * DAY, 3 * DAY], "reports": reports,
                        "item_boundaries": [2 * DAY + 3_600_000, 3 * DAY + 3_600_000]})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path)}}))
    base = ["--config", str(config)]

    assert main(["pipeline", "status", *base, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [b["at"] for b in status["done_boundaries"]] == ["1970-01-02T00:00:00Z", "1970-01-03T00:00:00Z",
                                                            "1970-01-04T00:00:00Z"]
    assert status["last_cycle"]["gate"]["published"] == "targeted/like/000002" and status["last_cycle"]["cycle"] == 3
    assert status["next_boundary"] == {"ts": 4 * DAY, "at": "1970-01-05T00:00:00Z", "due": False}
    assert status["last_item_cycle"]["ts"] == 3 * DAY + 3_600_000
    assert main(["pipeline", "status", *base]) == 0
    text = capsys.readouterr().out
    assert "gate: targeted published targeted/like/000002 (universal 0.1000, targeted 0.2000)" in text

    assert main(["pipeline", "rerun", "--from", "1970-01-03", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forgotten"] == ["1970-01-03T00:00:00Z", "1970-01-04T00:00:00Z"]
    state = records.state()
    assert state["done_boundaries"] == [DAY] and [r["cycle"] for r in state["reports"]] == [1]
    assert state["item_boundaries"] == []
    assert main(["pipeline", "rerun", "--from", str(2 * DAY), *base]) == 1  # nothing done from there
    assert "no done cycle boundary" in capsys.readouterr().err
    assert main(["pipeline", "rerun", "--from", "yesterday", *base]) == 2
    assert main(["pipeline", "rerun", *base]) == 2
    assert records.state()["done_boundaries"] == [DAY]
