"""Regenerate the PNG figures of the docs (docs/figures/) from the committed benchmark results.

    .venv/bin/python scripts/figures.py

Reads only files under docs/results/ (each written by a benchmark whose command the docs name), so
the pictures always show measured numbers:
- quality_<config>_curves.png   training loss and validation N@10 per epoch (seed 42), per config
- quality_ml100k_bars.png       test R@10 / N@10 per variant (mean of the seeds, range as error bar)
- time_to_quality.png           test N@10 of every validated epoch vs training time, ML-100k
                                (the RecBole comparison's config), with RecBole's SASRec (N@10 and
                                a tenth of its training time)
- figure4a_synthetic.png        the paper's figure 4a on the synthetic stream (computed here)
- serve_latency.png             U2I latency vs offered load (docs/results/serve_full.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = REPO / "docs" / "results"
FIGURES = REPO / "docs" / "figures"
# RecBole 1.2.1 SASRec on ML-100k, measured on this machine (issue 12): test metrics, training time.
RECBOLE = {"R@10": 0.1326, "N@10": 0.0636, "train_min": 57.0}
QUALITY_CONFIGS = ("quality_ml100k", "quality_ml100k_family")  # the like and family tables
COMPARISON_CONFIG = "quality_ml100k_recbole"  # the all-scene table, side by side with RecBole


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def quality_curves(report: dict[str, Any], name: str) -> Path:
    from quality import save_curves

    path = FIGURES / f"{name}_curves.png"
    save_curves(report, path)
    return path


def quality_bars(reports: dict[str, dict[str, Any]]) -> Path:
    rows = []  # (label, metric means, (min, max) per metric)
    for name, report in reports.items():
        task = "like" if name == "quality_ml100k" else "family"
        for variant, r in report["results"].items():
            if variant.startswith("popularity") or (task == "family" and r["task"] == "all-scene"):
                continue
            seeds = list(r.get("seeds", {}).values()) or [r]
            label = variant if r["task"] == "all-scene" else f"{variant}\n({task})"
            rows.append((label, {m: r[m] for m in ("R@10", "N@10")},
                         {m: (min(s[m] for s in seeds), max(s[m] for s in seeds)) for m in ("R@10", "N@10")}))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("R@10", "N@10"), strict=True):
        xs = range(len(rows))
        means = [r[1][metric] for r in rows]
        errs = [[m - r[2][metric][0] for m, r in zip(means, rows, strict=True)],
                [r[2][metric][1] - m for m, r in zip(means, rows, strict=True)]]
        ax.bar(xs, means, yerr=errs, capsize=3, color="#4c72b0")
        ax.axhline(RECBOLE[metric], color="#c44e52", linestyle="--", label=f"RecBole SASRec {RECBOLE[metric]}")
        ax.set_xticks(list(xs), [r[0] for r in rows], fontsize=8)
        ax.set(title=f"ML-100k test {metric} (mean of seeds; bars: range)", ylabel=metric)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = FIGURES / "quality_ml100k_bars.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_to_quality(report: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for variant, seeds in report["training"].items():
        if variant not in ("id_only", "ut"):
            continue  # the all-scene task, RecBole's protocol
        for seed, record in seeds.items():
            curve = record.get("test_curve", [])
            ax.plot([c["train_s"] / 60 for c in curve], [c["test_N@10"] for c in curve],
                    label=f"{variant} seed {seed}", alpha=0.8)
    ax.axhline(RECBOLE["N@10"], color="#c44e52", linestyle="--", label="RecBole SASRec test N@10")
    ax.axvline(RECBOLE["train_min"] / 10, color="grey", linestyle=":", label="a tenth of its 57 min")
    ax.set(title="ML-100k: test N@10 of each validated epoch vs training time (2 CPU cores)",
           xlabel="training minutes (wall clock, evaluation excluded)", ylabel="test N@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = FIGURES / "time_to_quality.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure4a() -> Path:
    from figure4a import DAY_MS, SYNTHETIC
    from precise.data import generate_synthetic
    from precise.pipeline.exposure import cycle_boundaries, exposure_shares, plot_shares

    events = generate_synthetic(SYNTHETIC).events
    bounds = cycle_boundaries(int(events["ts"].min()), int(events["ts"].max()) + 1, DAY_MS)
    path = FIGURES / "figure4a_synthetic.png"
    plot_shares(exposure_shares(events, bounds, ["click"]), str(path),
                "Figure 4a on the synthetic stream (configs/synthetic.yaml)")
    return path


def serve_latency(report: dict[str, Any]) -> Path:
    closed = report["closed_loop_u2i"]
    fig, ax = plt.subplots(figsize=(7, 4))
    qps = [c["qps"] for c in closed]
    ax.plot(qps, [c["p50_ms"] for c in closed], marker="o", label="p50")
    ax.plot(qps, [c["p99_ms"] for c in closed], marker="s", label="p99")
    for c in closed:
        ax.annotate(f"{c['concurrency']} conn.", (c["qps"], c["p99_ms"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set(title="U2I over HTTP (Ray Serve), closed loop, 2 cores", xlabel="requests/s", ylabel="latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = FIGURES / "serve_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    FIGURES.mkdir(parents=True, exist_ok=True)
    written = [figure4a()]
    quality = {name: r for name in QUALITY_CONFIGS if (r := load(name)) is not None}
    for name, report in quality.items():
        written.append(quality_curves(report, name))
    if quality:
        written.append(quality_bars(quality))
    comparison = load(COMPARISON_CONFIG)
    if comparison is not None:
        written.append(quality_curves(comparison, COMPARISON_CONFIG))
        if any(r.get("test_curve") for seeds in comparison["training"].values() for r in seeds.values()):
            written.append(time_to_quality(comparison))  # runs that kept every epoch's test metric
    if (serve := load("serve_full")) is not None:
        written.append(serve_latency(serve))
    for path in written:
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
