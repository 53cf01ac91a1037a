"""`precise models list|show|diff` against a real registry."""

from __future__ import annotations

import json

import torch

from precise.cli import main
from precise.store.registry import ModelRegistry


def test_list_show_diff(tmp_path, capsys):
    registry = ModelRegistry(tmp_path)
    for n in (1, 2):
        registry.register("universal", {"w": torch.zeros(2)}, {"epochs": n, "config": {"name": "x"}})
    base = ["--root", str(tmp_path), "--json"]
    assert main(["models", "list", *base]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["latest"] == "000002" and [r["version"] for r in listed["versions"]] == ["000001", "000002"]
    assert main(["models", "show", "000001", *base]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["epochs"] == 1
    assert main(["models", "diff", "000001", "000002", *base]) == 0
    changed = json.loads(capsys.readouterr().out)["changed"]
    assert changed["epochs"] == [1, 2] and "config.name" not in changed
    assert main(["models", "show", "000009", *base]) == 1
    assert main(["models", "diff", "000001", *base]) == 2


def test_promote_and_rollback_move_latest_recorded(tmp_path, capsys):
    registry = ModelRegistry(tmp_path)
    for _ in range(3):
        registry.register("targeted", {"w": torch.zeros(2)}, {}, task="like")
    base = ["--root", str(tmp_path), "--json"]
    assert main(["models", "rollback", "targeted", *base]) == 0  # the task: the default config's target
    moved = json.loads(capsys.readouterr().out)
    assert (moved["task"], moved["from"], moved["to"], moved["withdrawn"]) == ("like", "000003", "000002", ["000003"])
    assert registry.latest("targeted", "like").version == "000002"
    assert main(["models", "promote", "targeted", "000001", "--note", "why", *base]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--kind", "targeted", *base]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["latest"] == "000001" and [r["withdrawn"] for r in listed["versions"]] == [False, True, True]
    assert [(m["action"], m["to"], m["note"]) for m in listed["moves"]] == [
        ("rollback", "000002", None), ("promote", "000001", "why")]
    # bad input changes nothing: exit 2
    assert main(["models", "promote", "targeted", "000009", *base]) == 2
    assert "no model targeted/like/000009" in capsys.readouterr().err
    assert main(["models", "promote", "000002", *base]) == 2 and main(["models", "rollback", *base]) == 2
    assert main(["models", "rollback", "targeted", *base]) == 1  # nothing older than 000001
    assert "no targeted version older" in capsys.readouterr().err
    assert registry.latest("targeted", "like").version == "000001" and len(registry.moves("targeted", "like")) == 2
