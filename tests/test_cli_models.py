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
