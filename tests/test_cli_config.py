"""`precise config validate|show`: exit codes, --json, and no credential in what `show` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-value-that-must-not-print"


def precise(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "precise.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_validate_exit_codes(tmp_path: Path) -> None:
    ok = precise("config", "validate", "--config", str(ROOT / "configs/ml100k.yaml"), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"valid": True, "config": str(ROOT / "configs/ml100k.yaml"), "name": "ml100k"}

    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  partitions: 0\n")
    out = precise("config", "validate", "--config", str(bad))
    assert out.returncode == 1
    assert "kafka.partitions" in out.stderr

    missing = precise("config", "validate", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    unknown = precise("config", "frobnicate")
    assert unknown.returncode == 2  # argparse: bad input


def test_show_redacts_credentials(tmp_path: Path) -> None:
    cfg = tmp_path / "secured.yaml"
    cfg.write_text(
        "name: secured\n"
        "kafka:\n"
        "  client_options:\n"
        "    security_protocol: SASL_SSL\n"
        "    sasl_plain_username: alice\n"
        "    sasl_plain_password: ${KAFKA_PW}\n"
        "serve:\n"
        "  auth:\n"
        "    token_env: MY_TOKEN\n"
    )
    for fmt in ([], ["--json"]):
        out = precise("config", "show", "--config", str(cfg), *fmt, env={"KAFKA_PW": SECRET})
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout
        assert "alice" in out.stdout and "MY_TOKEN" in out.stdout  # not a secret: shown
    shown = json.loads(out.stdout)
    assert shown["kafka"]["client_options"]["sasl_plain_password"] == "<redacted>"
    assert shown["serve"]["auth"]["token_env"] == "MY_TOKEN"

