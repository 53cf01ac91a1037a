"""Every job entrypoint takes the same common flags and turns bad input into exit 2 with a reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith("_"))


def load_job(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "jobs"))  # where `from _common import run_job` looks
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_job_is_listed():
    assert JOBS == ["deploy_serve", "import_history", "ingest", "pipeline", "predict", "replay", "sequences",
                    "targeted", "universal"]


@pytest.mark.parametrize("name", JOBS)
def test_common_flags_and_bad_config(name, monkeypatch, tmp_path, capsys):
    job = load_job(name, monkeypatch)
    with pytest.raises(SystemExit) as done:
        job.main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ("--config", "--root", "--bootstrap")), usage

    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  bootstrap_servers: 127.0.0.1:1\n  partitons: 3\n")  # a misspelt key
    assert job.main(["--config", str(bad)]) == 2
    err = capsys.readouterr()
    assert "error:" in err.err and "partitons" in err.err and err.out == ""

    assert job.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err

