"""The quality benchmark's contract on a tiny run: every variant reports R/N@{10,30,50}, its cold
subset and the protocol; the last stdout line is the JSON; a PNG of the curves is written."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

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

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100k ships in the recbole wheel"
)


def tiny_config(tmp_path: Path) -> Path:
    import yaml

    quality = bench("quality")

    config = quality.load_config(quality.QUICK_CONFIG)
    config["sequence"]["max_len"] = 12
    config["target"]["max_len"] = 8
    config["text"]["model"] = "hashed"
    config["model"].update(id_dim=8, text_dim=8, token_dim=8, num_layers=1, num_negatives=16)
    config["universal"].update(epochs=1, batch_size=256, freeze_tokens_epochs=0)
    config["targeted"].update(epochs=1, batch_size=256)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_quality_benchmark_contract(tmp_path, capsys):
    quality = bench("quality")

    assert quality.main(["--config", str(tiny_config(tmp_path)), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert out[0].startswith("| variant |")  # the Markdown table comes first
    assert report["dataset"] == "ml-100k"
    protocol = report["protocol"]
    assert protocol["sequence"]["max_len"] == 12 and protocol["seeds"] == [42]
    assert protocol["negatives"]["uniform"] == 16 and protocol["epochs"] == {"universal": 1, "targeted": 1}
    metrics = {f"{m}@{k}" for m in "RN" for k in (10, 30, 50)}
    for variant in ("id_only", "llm_only", "pool", "ut", "tt", "ut_tt"):
        result = report["results"][variant]
        assert metrics <= set(result) and metrics <= set(result["cold"]), variant
        assert all(0.0 <= result[k] <= 1.0 for k in metrics)
        assert result["R@10"] <= result["R@30"] <= result["R@50"]
    assert report["results"]["tt"]["users"] == report["results"]["ut_target"]["users"]
    assert Path(report["plot"]).is_file()


def test_train_speed_benchmark_reports_every_universal_variant(tmp_path, capsys):
    train_speed = bench("train_speed")

    args = ["--config", str(tiny_config(tmp_path)), "--steps", "1"]
    assert train_speed.main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["results"]) == {"id_only", "llm_only", "pool", "ut"}
    assert report["results"]["id_only"]["ratio_to_id_only"] == 1.0
    assert all(r["seq_per_s"] > 0 for r in report["results"].values())


def test_prepare_tokens_caches_the_table_then_training_reuses_it(tmp_path, capsys):
    quality = bench("quality")

    config, cache = str(tiny_config(tmp_path)), tmp_path / "tokens"
    assert quality.main(["--config", config, "--token-cache", str(cache), "--prepare-tokens"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prepared"] is True
    (cached,) = cache.glob("ml-100k_hashed_m32_d8.npz")
    mtime = cached.stat().st_mtime_ns
    args = ["--config", config, "--token-cache", str(cache), "--results", str(tmp_path), "--variants", "pool"]
    assert quality.main(args) == 0
    assert cached.stat().st_mtime_ns == mtime  # read, not rebuilt
    assert "token table: " in capsys.readouterr().err
