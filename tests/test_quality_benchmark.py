"""The quality benchmark's contract on a tiny run over the real ML-100k lake: every variant reports
R/N@{10,30,50}, its cold subset, per-seed values, the task and wall time; the last stdout line is
the JSON; a PNG of the curves is written. Also the training-speed benchmark on the same lake."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def bench(name: str) -> ModuleType:
    """Import `benchmarks/<name>.py`. benchmarks/ is on sys.path only during the import (and the
    scripts' own insertions are undone): left there, `benchmarks/serve.py` would shadow the `serve`
    package for every later test of the session."""
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def tiny_config(tmp_path: Path, variants: list[str], seeds: list[int]) -> Path:
    config = {
        "sequences": {"max_len": 50, "buckets": 2, "targets": [{"name": "like", "actions": ["like"]}]},
        "training": {"model": {"max_len": 12, "id_dim": 8, "text_dim": 8, "token_dim": 8, "num_layers": 1,
                               "num_negatives": 16},
                     "text": {"model": "hashed", "max_tokens": 8},
                     "universal": {"epochs": 1, "batch_size": 256}, "targeted": {"epochs": 1, "batch_size": 256}},
        "quality": {"dataset": "ml-100k", "seeds": seeds, "variants": variants},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_quality_benchmark_contract(ml100k_copy, tmp_path, capsys):
    quality = bench("quality")
    root = tmp_path / "lake"
    ml100k_copy(root)
    variants = ["id_only", "llm_only", "pool", "ut", "tt", "ut_tt"]
    args = ["--config", str(tiny_config(tmp_path, variants, [1, 2])), "--root", str(root),
            "--results", str(tmp_path / "results")]
    assert quality.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert any(line.startswith("| variant |") for line in out)  # the Markdown table, then the JSON
    assert report["dataset"] == "ml-100k" and report["protocol"]["seeds"] == [1, 2]
    assert report["command"].startswith("python benchmarks/quality.py --config")
    metrics = {f"{m}@{k}" for m in "RN" for k in (10, 30, 50)}
    for variant in [*variants, "ut_target", "popularity", "popularity_target"]:
        result = report["results"][variant]
        assert metrics <= set(result) and metrics <= set(result["cold"]), variant
        assert all(0.0 <= result[k] <= 1.0 for k in metrics)
        assert result["R@10"] <= result["R@30"] <= result["R@50"]
        assert result["task"] == ("all-scene" if variant in ("id_only", "llm_only", "pool", "ut", "popularity")
                                  else "like")
    for variant in variants:
        seeds = report["results"][variant]["seeds"]
        assert set(seeds) == {"1", "2"} and all(s["wall_s"] > 0 for s in seeds.values())
        mean = sum(s["N@10"] for s in seeds.values()) / 2
        assert report["results"][variant]["N@10"] == pytest.approx(mean)
    # the target task's three rows rank the same users' same held-out items
    assert report["results"]["tt"]["users"] == report["results"]["ut_target"]["users"] \
        == report["results"]["popularity_target"]["users"]
    assert Path(report["plot"]).is_file()


def test_train_speed_benchmark_reports_every_universal_variant(ml100k_copy, tmp_path, capsys):
    train_speed = bench("train_speed")
    root = tmp_path / "lake"
    ml100k_copy(root)
    args = ["--config", str(tiny_config(tmp_path, ["id_only"], [1])), "--steps", "1", "--root", str(root)]
    assert train_speed.main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["results"]) == {"id_only", "llm_only", "pool", "ut", "id_wide"}
    assert report["results"]["id_only"]["ratio_to_id_only"] == 1.0
    assert all(r["seq_per_s"] > 0 for r in report["results"].values())


def test_universal_from_reuses_the_other_runs_ut_and_refuses_other_settings(ml100k_copy, tmp_path, capsys):
    quality = bench("quality")
    root, results = tmp_path / "lake", tmp_path / "results"
    ml100k_copy(root)
    first = tiny_config(tmp_path, ["ut"], [1])  # tiny.yaml: trains ut
    assert quality.main(["--config", str(first), "--root", str(root), "--results", str(results)]) == 0
    first_report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trained = first_report["training"]["ut"]["1"]
    assert trained["test_curve"], "every validated epoch's test metric is recorded"
    # --evaluate-registered: no training, the registered model evaluated again gives the same numbers
    assert quality.main(["--config", str(first), "--root", str(root), "--results", str(results),
                         "--evaluate-registered"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["results"]["ut"]["N@10"] == pytest.approx(first_report["results"]["ut"]["N@10"])
    assert again["training"]["ut"]["1"]["model"] == trained["model"]
    assert again["training"]["ut"]["1"]["test_curve"] == trained["test_curve"]  # kept in the model's metadata

    second = yaml.safe_load(first.read_text())
    second["quality"].update(variants=["ut_tt"], universal_from="tiny")
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(second))
    assert quality.main(["--config", str(path), "--root", str(root), "--results", str(results)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reused = report["training"]["ut"]["1"]
    assert reused["model"] == trained["model"] and reused["reused_from"].endswith("tiny/seed1/ut")
    assert "ut_tt" in report["results"] and "ut_target" in report["results"]
    # the source run's registry is left as it was: only its universal versions were copied
    assert not (results / "runs" / "tiny" / "seed1" / "ut" / "models" / "targeted").exists()

    second["training"]["model"]["id_dim"] = 16  # not the settings the other run's ut was trained with
    path.write_text(yaml.safe_dump(second))
    with pytest.raises(SystemExit, match="training.model differs"):
        quality.main(["--config", str(path), "--root", str(root), "--results", str(results)])
    second["quality"]["universal_from"] = "nothing-ran"
    path.write_text(yaml.safe_dump(second))
    with pytest.raises(SystemExit, match="no ut model of seed 1"):
        quality.main(["--config", str(path), "--root", str(root), "--results", str(results)])
