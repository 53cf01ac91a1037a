"""`precise lake status|dead-letters` on a lake written through precise.store (no broker: the
acceptance test, tests/test_cli_acceptance.py, runs them against a real ingest and Kafka)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from precise.cli import main
from precise.stack.process import free_port
from precise.store.files import Files
from precise.store.lake import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, Layout, Ledger, save_ledger

RAW = [b"\xff\xfe not utf-8", b'{"event_id": 1}', b"{"]


def _lake(tmp_path):
    storage = Files(tmp_path / "root")
    layout = Layout(storage)
    events = pa.Table.from_pylist([{"event_id": f"e{i}", "user_id": "u", "item_id": "i", "scene": "s",
                                    "action": "click", "ts": 1_700_000_000_000 + i, "partition": 0, "offset": i}
                                   for i in range(10)], schema=EVENT_SCHEMA)
    storage.write_parquet(layout.event_file("2023-11-14", 0, 0, 10), events)
    storage.write_parquet(layout.event_file("2023-11-14", 0, 0, 4), events.slice(0, 4))  # a compaction source
    storage.write_parquet(layout.event_file("2023-11-14", 0, 13, 20), events.slice(0, 1))  # a crashed batch's
    dead = pa.Table.from_pylist([{"topic": "ev", "partition": 0, "offset": 10 + n, "reason": f"r{n}",
                                  "reason_kind": kind, "key": None, "value": value}
                                 for n, (kind, value) in enumerate(zip(["not_utf8", "wrong_type", "invalid_json"],
                                                                       RAW, strict=True))],
                                schema=DEAD_LETTER_SCHEMA)
    storage.write_parquet(layout.dead_letter_file("ev", 0, 10, 13), dead)
    save_ledger(storage, Ledger(offsets={"ev": {0: 13}, "it": {0: 5}}, events_topic="ev", items_topic="it",
                                batches=2, gaps=[{"topic": "ev", "partition": 0, "start": 0, "end": 0}]))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "root")},
                                      "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
                                      "ingest": {"kafka_timeout_s": 1}}))
    return str(config)


def test_status_without_a_broker(tmp_path, capsys):
    config = _lake(tmp_path)
    assert main(["lake", "status", "--config", config, "--json", "--no-kafka"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["events"]["committed"] == 10 and status["events"]["files"] == 1
    assert (status["events"]["superseded_files"], status["events"]["uncommitted_files"]) == (1, 1)
    assert status["dead_letters"]["by_reason"] == {"not_utf8": 1, "wrong_type": 1, "invalid_json": 1}
    assert [p["next_offset"] for p in status["partitions"]] == [13, 5] and status["partitions"][0]["lag"] is None
    assert status["writer_lease"] is None and status["retention_gaps"]["count"] == 1
    assert main(["lake", "status", "--config", config]) == 0  # asks the broker: nobody listens there
    out = capsys.readouterr().out
    assert "broker unreachable at 127.0.0.1" in out and "events: 10 committed" in out
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "none")}}))
    assert main(["lake", "status", "--config", str(empty)]) == 1
    assert "no lake at" in capsys.readouterr().err


def test_dead_letters_list_and_lossless_export(tmp_path, capsys):
    config = _lake(tmp_path)
    assert main(["lake", "dead-letters", "--config", config, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "<" in out and "bytes, not UTF-8>" in out and "1 of 3 shown" in out
    assert main(["lake", "dead-letters", "--config", config, "--json", "--reason", "wrong_type"]) == 0
    assert [r["reason"] for r in json.loads(capsys.readouterr().out)["dead_letters"]] == ["r1"]
    jsonl, parquet = tmp_path / "out" / "dl.jsonl", tmp_path / "dl.parquet"
    assert main(["lake", "dead-letters", "--config", config, "--export", str(jsonl), "--limit", "1"]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [base64.b64decode(r["value_b64"]) for r in rows] == RAW  # all of them, raw bytes intact
    assert rows[0]["value_text"] is None and rows[1]["value_text"] == RAW[1].decode() and rows[0]["key_b64"] is None
    assert main(["lake", "dead-letters", "--config", config, "--export", str(parquet)]) == 0
    assert pq.read_table(parquet).column("value").to_pylist() == RAW
    capsys.readouterr()
    for bad in (["--reason", "nope"], ["--export", str(tmp_path / "x.txt")], ["--limit", "-1"]):
        assert main(["lake", "dead-letters", "--config", config, *bad]) == 2, bad
        assert capsys.readouterr().err.startswith("error:")


def test_the_console_script_says_broker_unreachable_not_a_traceback(tmp_path):
    """As an operator runs it: the installed `precise` script, a broker address nobody listens on."""
    config = _lake(tmp_path)
    script = Path(sys.executable).with_name("precise")
    done = subprocess.run([str(script), "lake", "status", "--config", config], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "broker unreachable at 127.0.0.1" in done.stdout and "lag unknown" in done.stdout
    assert "Traceback" not in done.stderr and "events: 10 committed" in done.stdout
