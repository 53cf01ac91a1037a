"""The metric catalogue, its docs table and the Grafana dashboard agree; the helpers check names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from precise.metrics import inc, metric, set_gauge, version_number
from precise.metrics.catalog import CATALOG, SPECS
from precise.metrics.serve import OTHER, ServeMetrics

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "configs" / "grafana" / "precise.json"


def test_catalog_names_are_unique_and_well_formed():
    assert len(SPECS) == len(CATALOG)
    for spec in CATALOG:
        assert re.fullmatch(r"precise_[a-z0-9_]+", spec.name), spec.name
        assert not spec.name.endswith("_total"), "Prometheus adds _total to counters itself"
        assert spec.tags and spec.description and spec.watch, spec.name
        if spec.kind == "histogram":
            assert list(spec.boundaries) == sorted(set(spec.boundaries)) and spec.boundaries, spec.name
        else:
            assert not spec.boundaries, spec.name


def test_helpers_refuse_unknown_names_and_wrong_kinds():
    with pytest.raises(KeyError, match="not in precise.metrics.catalog"):
        inc("precise_no_such_metric")
    with pytest.raises(ValueError, match="is a counter, not a gauge"):
        set_gauge("precise_ingest_events_ingested", 1, topic="t")
    with pytest.raises(ValueError, match="is a gauge, not a histogram"):
        metric("precise_train_loss", "histogram")


def test_version_numbers():
    assert version_number("targeted/like/000012") == 12
    assert version_number("universal/000001") == 1
    assert version_number("000007") == 7
    assert version_number(None) == 0 and version_number("table-1") == 0


def test_unknown_paths_share_one_endpoint_tag():
    metrics = ServeMetrics(["/v1/recall/u2i", "/healthz"], task="t")
    assert metrics.endpoint("/v1/recall/u2i") == "/v1/recall/u2i"
    assert metrics.endpoint("/wp-admin/../etc/passwd") == OTHER


def test_operations_doc_lists_every_metric():
    text = (REPO / "docs" / "operations.md").read_text()
    for spec in CATALOG:
        row = f"| `{spec.name}` | {spec.kind} | {', '.join(spec.tags)} |"
        assert row in text, f"docs/operations.md lacks the row for {spec.name}"
    listed = set(re.findall(r"^\| `(precise_[a-z0-9_]+)` \|", text, flags=re.M))
    assert listed == set(SPECS), f"documented but not in the catalogue: {sorted(listed - set(SPECS))}"


def test_grafana_dashboard_is_current_and_plots_every_metric():
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_grafana_dashboard.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    plotted = {re.sub(r"_(total|bucket)$", "", name.removeprefix("ray_"))
               for e in exprs for name in re.findall(r"ray_precise_[a-z0-9_]+", e)}
    assert plotted == set(SPECS)
    for spec in CATALOG:  # the Prometheus spelling Ray exports
        assert any(spec.prometheus_name in e for e in exprs), spec.name
    assert board["uid"] and board["templating"]["list"][0]["type"] == "datasource"
