"""Offline quality of the PRECISE variants (paper tables III, IV, VI, VII) on MovieLens, measured
through the platform's own training recipe.

    python benchmarks/quality.py [--config configs/quality_ml100k.yaml] [--quick]
                                 [--variants ut,ut_tt] [--seeds 42,43] [--device cpu|cuda] [--root DIR]

1. The dataset is replayed into Kafka (a private broker, or PRECISE_KAFKA_BOOTSTRAP) and ingested
   into a lake of its own by the ingest job: the platform's validation, lake and sequence builder.
   Built once and kept (`--root`, default `<PRECISE_HOME>/bench/<dataset>-<sequences fingerprint>`).
2. Every (seed, variant) runs `precise.train.recipe` in-process: setup from that lake (the split of
   `precise.store.sequences`), fit with best-epoch selection on the validation cases, register into
   a registry of its own, then evaluate the registered weights on the test cases. ut_tt warm-starts
   from the same seed's ut, as targeted training warm-starts from the LATEST universal model.
   The config is a platform config (the same file runs `jobs/universal.py` / `jobs/targeted.py`)
   with a `quality:` section; a variant sets the fusion (id_only, llm_only, pool, ut = moe) or the
   targeted start (tt: from scratch, ut_tt: warm start).

Universal variants are evaluated on the all-scene task (next item), targeted variants on the target
task of `training.target`, with `ut_target` (the universal model used directly on the target task's
test cases, all-scene history) and popularity as references. Full ranking over every item, Recall@K
and NDCG@K, cold items = the least popular (by training interactions) outside `hot_fraction`.
Prints a Markdown table and ends with one JSON line: `results[variant]` holds R@K and N@K (means
over seeds), `cold`, `history_masked`, `seeds` (per-seed values), `task` and `wall_s`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from precise.config import PreciseConfig, load_config  # noqa: E402
from precise.model.config import TARGETED_VARIANTS, UNIVERSAL_VARIANTS  # noqa: E402
from precise.paths import precise_home  # noqa: E402
from precise.store.registry import ITEMS_FILE, ModelRegistry  # noqa: E402
from precise.train import recipe  # noqa: E402
from precise.train.data import eval_set  # noqa: E402
from precise.train.evaluate import cold_items, evaluate_model, evaluate_scorer, popularity_scorer  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "quality_ml100k.yaml"
QUICK_CONFIG = REPO / "configs" / "quality_ml100k_quick.yaml"


# ---- the lake --------------------------------------------------------------------------------------


def lake_root(config: PreciseConfig) -> Path:
    """Where the benchmark keeps the dataset's lake: one per dataset and sequence settings."""
    fingerprint = hashlib.sha256(json.dumps(config.sequences.model_dump(mode="json"), sort_keys=True).encode())
    return precise_home() / "bench" / f"{config.quality.dataset}-{fingerprint.hexdigest()[:10]}"


def lake_is_complete(root: Path, events: int) -> bool:
    from precise.store.files import Files
    from precise.store.lake import load_ledger

    ledger = load_ledger(Files(root))
    return ledger.totals.get("events", 0) == events and (root / "sequences").is_dir()


def build_lake(config: PreciseConfig, root: Path, log: Any) -> None:
    """Replay the dataset into fresh topics and ingest it with the platform's ingest job."""
    import uuid

    import ray

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _stack import kafka_bootstrap
    from precise.data import load_movielens
    from precise.events.replay import replay
    from precise.ingest.job import IngestJob

    dataset = load_movielens(config.quality.dataset)
    if lake_is_complete(root, len(dataset.events)):
        from precise.ingest.job import connect_ray
        from precise.ingest.sequences import SequenceBuilder

        connect_ray()  # sequences of another format or spec are rebuilt; else nothing to do
        cfg = config.model_copy(deep=True)
        cfg.storage.root = str(root)
        built = SequenceBuilder(cfg).build()
        ray.shutdown()
        log(f"lake: {root} ({len(dataset.events)} events; sequences {[(b.name, b.full) for b in built]})")
        return
    shutil.rmtree(root, ignore_errors=True)
    tag = uuid.uuid4().hex[:8]
    with kafka_bootstrap() as bootstrap:
        cfg = config.model_copy(deep=True)
        cfg.kafka = cfg.kafka.model_copy(update={
            "bootstrap_servers": bootstrap, "events_topic": f"quality-ev-{tag}", "items_topic": f"quality-it-{tag}",
            "dead_letter_topic": f"quality-ev-{tag}.dlq"})
        cfg.storage.root = str(root)
        started = time.perf_counter()
        replay(dataset, cfg.kafka, progress=False)
        started_ray = not ray.is_initialized()
        try:
            summary = IngestJob(cfg).run_once()
        finally:
            if started_ray and ray.is_initialized():
                ray.shutdown()
    if summary["events"] != len(dataset.events):
        raise RuntimeError(f"the lake holds {summary['events']} events, the dataset {len(dataset.events)}: {summary}")
    log(f"lake: {root} built in {time.perf_counter() - started:.0f} s ({summary['events']} events)")


# ---- one variant -----------------------------------------------------------------------------------


def variant_config(config: PreciseConfig, variant: str, seed: int, root: Path) -> PreciseConfig:
    cfg = config.model_copy(deep=True)
    cfg.storage.root = str(root)
    t = cfg.training
    fusion = UNIVERSAL_VARIANTS.get(variant, "moe")  # targeted variants fuse ID and text (PRECISE)
    width = {"id_dim": t.model.id_dim + t.model.text_dim} if variant == "id_wide" else {}
    t.model = t.model.model_copy(update={"fusion": fusion, **width})
    t.universal = t.universal.model_copy(update={"seed": seed})
    t.targeted = t.targeted.model_copy(update={"seed": seed})
    return cfg


SHARED_UNIVERSAL = (("sequences",), ("training", "model"), ("training", "universal"), ("training", "text"))


def reuse_universal(cfg: PreciseConfig, seed: int, runs: Path, wait_s: float, log: Any
                    ) -> tuple[recipe.Setup, torch.nn.Module, dict[str, Any]]:
    """This seed's ut as registered by the run of the `quality.universal_from` config (under the same
    results folder), after checking that it was trained with this config's settings. `wait_s`: how
    long to wait for it to appear (both runs side by side)."""
    stem = cfg.quality.universal_from
    source = runs.parent / stem / f"seed{seed}" / "ut"
    deadline = time.monotonic() + wait_s
    while (version := ModelRegistry(source).latest("universal")) is None and time.monotonic() < deadline:
        time.sleep(5)
    if version is None:
        raise SystemExit(f"quality.universal_from: no ut model of seed {seed} under {source}; run "
                         f"benchmarks/quality.py --config configs/{stem}.yaml first (or beside this, with --wait)")
    ours, theirs = cfg.model_dump(mode="json"), version.metadata["config"]
    for path in SHARED_UNIVERSAL:
        a, b = ours, theirs
        for key in path:
            a, b = a[key], b[key]
        if a != b:
            raise SystemExit(f"quality.universal_from: {'.'.join(path)} differs from the ut run under {source}")
    # Universal versions only: the source run's own targeted versions stay where they are.
    shutil.copytree(source / "models" / "universal", runs / f"seed{seed}" / "ut" / "models" / "universal")
    registry = ModelRegistry(runs / f"seed{seed}" / "ut")
    version = registry.latest("universal")
    setup = recipe.setup(cfg, "universal", start="scratch", registry=registry)
    if json.loads(registry.read_file(version, ITEMS_FILE)) != setup.items:
        raise SystemExit(f"quality.universal_from: the item vocabulary under {source} differs from this lake's")
    log(f"[universal/all] seed {seed}: ut reused from {source} ({version.ref})")
    return setup, recipe.trained_model(setup, registry.load_state_dict(version)), \
        record_of(version, reused_from=str(source))


def record_of(version: Any, **extra: Any) -> dict[str, Any]:
    """The training record of a registered version, from its metadata."""
    meta = version.metadata
    return {"best_epoch": meta["selected_by"]["epoch"], "best_val": meta["selected_by"]["value"],
            "select_metric": meta["selected_by"]["metric"], "history": meta["history"],
            "train_s": round(sum(r.get("seconds", 0.0) for r in meta["history"]), 1), "wall_s": 0.0,
            "model": version.ref, "test_curve": meta.get("benchmark_test_curve", []), **extra}


def registered_variant(cfg: PreciseConfig, variant: str, seed: int, runs: Path
                       ) -> tuple[recipe.Setup, torch.nn.Module, dict[str, Any]]:
    """`--evaluate-registered`: the model a previous run of this config registered, evaluated again."""
    kind = "universal" if variant in UNIVERSAL_VARIANTS else "targeted"
    registry = ModelRegistry(runs / f"seed{seed}" / ("ut" if variant == "ut_tt" else variant))
    start = "scratch" if variant in ("tt", *UNIVERSAL_VARIANTS) else "parent"
    setup = recipe.setup(cfg, kind, start=start, registry=registry)
    version = registry.latest(kind, setup.task)
    if version is None:
        raise SystemExit(f"--evaluate-registered: no {variant} model of seed {seed} under {registry.root}")
    if json.loads(registry.read_file(version, ITEMS_FILE)) != setup.items:
        raise SystemExit(f"--evaluate-registered: the vocabulary of {version.ref} differs from this lake's")
    model = recipe.trained_model(setup, registry.load_state_dict(version))
    return setup, model, record_of(version, evaluated_again=True)


def run_variant(config: PreciseConfig, variant: str, seed: int, runs: Path, device: str, log: Any,
                wait_s: float = 0.0, registered: bool = False) -> tuple[recipe.Setup, torch.nn.Module, dict[str, Any]]:
    """Set up, fit, register and reload one variant; returns its setup, model and training record."""
    started = time.perf_counter()
    cfg = variant_config(config, variant, seed, Path(config.storage.root))
    if registered:
        setup, model, record = registered_variant(cfg, variant, seed, runs)
        return setup, model.to(device), record
    if variant == "ut" and config.quality.universal_from:
        setup, model, record = reuse_universal(cfg, seed, runs, wait_s, log)
        return setup, model.to(device), record
    kind = "universal" if variant in UNIVERSAL_VARIANTS else "targeted"
    # ut_tt warm-starts from this seed's ut: it shares ut's registry, whose LATEST universal is ut.
    registry = ModelRegistry(runs / f"seed{seed}" / ("ut" if variant == "ut_tt" else variant))
    start = "scratch" if variant in ("tt", *UNIVERSAL_VARIANTS) else "parent"
    setup = recipe.setup(cfg, kind, start=start, registry=registry)
    test, curve = setup.test(), []

    def test_after_validation(model: torch.nn.Module, _opt: Any, progress: recipe.Progress, _best: Any) -> None:
        # Reported, never used to select: the test metric of every validated epoch against the training
        # time spent so far (how fast a variant reaches a quality level).
        record = progress.history[-1]
        if not any(k.startswith("val_") for k in record):
            return
        metrics = evaluate_model(recipe.evaluated_model(model), test, None, (10,), config.training.eval_batch_users,
                                 device).metrics
        spent = sum(r.get("seconds", 0.0) for r in progress.history)
        curve.append({"epoch": record["epoch"], "train_s": round(spent, 1),
                      "test_R@10": metrics["R@10"], "test_N@10": metrics["N@10"]})

    state, progress = recipe.fit(setup.payload, device=device, log=log, on_epoch=test_after_validation)
    version = recipe.register(setup, state, progress, cfg, registry, extra={"benchmark_test_curve": curve})
    model = recipe.trained_model(setup, registry.load_state_dict(version)).to(device)
    record = {"best_epoch": progress.best_epoch, "best_val": progress.best_metric,
              "select_metric": setup.payload.select_metric, "history": progress.history,
              "train_s": round(sum(r.get("seconds", 0.0) for r in progress.history), 1),
              "wall_s": round(time.perf_counter() - started, 1), "model": version.ref, "test_curve": curve}
    return setup, model, record


def universal_on_target(ut: recipe.Setup, target: recipe.Setup) -> Any:
    """The target task's test cases with the all-scene history before the test cut (ut_target)."""
    cases = recipe.task_data(target.splits, "targeted", history="all").test
    known = [n for n, label in enumerate(cases[2]) if label in ut.lookup]
    return eval_set(*([part[n] for n in known] for part in cases), ut.lookup, ut.payload.model_config.max_len)


# ---- the benchmark -----------------------------------------------------------------------------------


def run_quality(config: PreciseConfig, runs: Path, device: str = "cpu", log: Any = print,
                wait_s: float = 0.0, registered: bool = False) -> dict[str, Any]:
    q = config.quality
    started = time.perf_counter()
    ks = tuple(q.ks)
    batch_users = config.training.eval_batch_users
    variants = list(q.variants)
    universal_names = [v for v in variants if v in UNIVERSAL_VARIANTS]
    if "ut_tt" in variants and "ut" not in universal_names:
        universal_names.append("ut")  # ut_tt warm-starts from it
    targeted_names = [v for v in variants if v in TARGETED_VARIANTS]
    per_seed: dict[str, dict[int, dict[str, Any]]] = {}
    training: dict[str, dict[int, dict[str, Any]]] = {}
    references: dict[str, Any] = {}

    def evaluate(setup: recipe.Setup, model: torch.nn.Module, data: Any) -> dict[str, Any]:
        cold = cold_items(setup.item_counts(), hot_fraction=q.hot_fraction)
        return evaluate_model(model, data, cold, ks, batch_users, device).as_dict()

    for seed in q.seeds:
        setups: dict[str, tuple[recipe.Setup, torch.nn.Module]] = {}
        for name in [*universal_names, *targeted_names]:
            setup, model, record = run_variant(config, name, seed, runs, device, log, wait_s, registered)
            setups[name] = (setup, model)
            training.setdefault(name, {})[seed] = record
            if name in variants:
                per_seed.setdefault(name, {})[seed] = {**evaluate(setup, model, setup.test()),
                                                       "wall_s": record["wall_s"]}
        first = setups[[*universal_names, *targeted_names][0]][0]
        counts = first.item_counts()
        if "popularity" not in references:
            references["popularity"] = evaluate_scorer(popularity_scorer(counts), _universal_test(first), None,
                                                       ks, batch_users, device).as_dict()
        if targeted_names:
            target_setup = setups[targeted_names[0]][0]
            if "popularity_target" not in references:
                references["popularity_target"] = evaluate_scorer(
                    popularity_scorer(target_setup.item_counts()), target_setup.test(), None, ks, batch_users,
                    device).as_dict()
            if "ut" in setups:
                ut_setup, ut_model = setups["ut"]
                per_seed.setdefault("ut_target", {})[seed] = evaluate(
                    ut_setup, ut_model, universal_on_target(ut_setup, target_setup))
        del setups

    target = config.training.target
    results = {name: {**_mean(list(runs_.values())), "seeds": {str(s): r for s, r in runs_.items()},
                      "task": target if name in TARGETED_VARIANTS or name == "ut_target" else "all-scene"}
               for name, runs_ in per_seed.items()}
    results.update({name: {**r, "task": "all-scene" if name == "popularity" else target}
                    for name, r in references.items()})
    t = config.training
    return {
        "benchmark": "quality",
        "dataset": q.dataset,
        "protocol": {
            "split": "leave-one-out by time per user, cut on the all-scene sequence (precise.store.sequences.split)",
            "selection": f"best epoch by validation {t.select_metric} (epoch 0 = the warm start for ut_tt)",
            "ranking": "full ranking over all items; history NOT masked (history_masked: HSTU-repo style)",
            "sequences": config.sequences.model_dump(mode="json"),
            "target_task": target,
            "model": t.model.model_dump(mode="json"),
            "universal": t.universal.model_dump(mode="json"),
            "targeted": t.targeted.model_dump(mode="json"),
            "text_model": t.text.model_dump(),
            "seeds": list(q.seeds),
            "cold": f"targets outside the {q.hot_fraction:.0%} most popular items by training interactions",
            "device": device,
        },
        "results": results,
        "training": {name: {str(s): {k: v for k, v in r.items() if k != "history"} for s, r in runs_.items()}
                     for name, runs_ in training.items()},
        "curves": {name: next(iter(runs_.values()))["history"] for name, runs_ in training.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _universal_test(setup: recipe.Setup) -> Any:
    reference = setup.splits["reference"]
    rows, histories, labels = reference.cases("test")
    return eval_set([reference.users[r] for r in rows], histories, labels, setup.lookup,
                    setup.payload.model_config.max_len)


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average nested metric dicts over seeds (counts such as `users` are equal across seeds)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = _mean([r[key] for r in runs])
        elif isinstance(value, float):
            out[key] = float(np.mean([r[key] for r in runs]))
        else:
            out[key] = value
    return out


def markdown_table(report: dict[str, Any]) -> str:
    ks = [k for k in (10, 30, 50) if f"R@{k}" in next(iter(report["results"].values()))]
    keys = [f"{m}@{k}" for m in "RN" for k in ks]
    lines = ["| variant | task | " + " | ".join(keys) + " | cold R@10 | cold N@10 | seeds |",
             "|---|---|" + "---|" * (len(keys) + 3)]
    for name, r in report["results"].items():
        cells = [f"{r[k]:.4f}" for k in keys] + [f"{r['cold'].get('R@10', 0):.4f}", f"{r['cold'].get('N@10', 0):.4f}"]
        lines.append(f"| {name} | {r['task']} | " + " | ".join(cells) + f" | {len(r.get('seeds', {})) or '-'} |")
    return "\n".join(lines)


def save_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    select = "val_" + report["protocol"]["selection"].split("validation ")[1].split(" ")[0]
    select = select.replace("val_N@", "val_ndcg_at_").replace("val_R@", "val_recall_at_")
    for name, history in report["curves"].items():
        style = "--" if name in TARGETED_VARIANTS else "-"  # targeted: other loss, other task
        losses = [(r["epoch"], r["loss"]) for r in history if "loss" in r]
        vals = [(r["epoch"], r[select]) for r in history if select in r]
        if losses:
            ax_loss.plot(*zip(*losses, strict=True), style, label=name)
        if vals:
            ax_val.plot(*zip(*vals, strict=True), style, marker="o", markersize=3, label=name)
    model = report["protocol"]["model"]
    ut_loss = "full softmax" if model.get("full_softmax") else "sampled softmax"
    tt_loss = {"users": "BPR (eq. 6)", "items": "item softmax",
               "both": "BPR + item softmax"}[model.get("target_loss", "users")]
    ax_loss.set(title=f"training loss (UT: {ut_loss}; TT dashed: {tt_loss})", xlabel="epoch", ylabel="loss")
    ax_val.set(title=f"validation {select.removeprefix('val_')} (TT dashed: target task)", xlabel="epoch")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"PRECISE quality on {report['dataset']} (seed {report['protocol']['seeds'][0]})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help=f"default: {DEFAULT_CONFIG.relative_to(REPO)}")
    parser.add_argument("--quick", action="store_true", help=f"the smoke-level config ({QUICK_CONFIG.name})")
    parser.add_argument("--variants", help="comma-separated subset of the config's variants")
    parser.add_argument("--seeds", help="comma-separated seeds (overrides quality.seeds)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--root", type=Path, help="the lake to train on (default: one per dataset, built once)")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--evaluate-registered", action="store_true",
                        help="no training: evaluate the models the last run of this config registered")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S",
                        help="quality.universal_from: wait up to S seconds per seed for that run's ut")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    path = args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    config: PreciseConfig = load_config(path)
    if config.quality is None:
        parser.error(f"{path} has no `quality:` section (it is not a benchmark config)")
    if args.variants:
        wanted = args.variants.split(",")
        unknown = [v for v in wanted if v not in config.quality.variants]
        if unknown:
            parser.error(f"variants {unknown} are not in the config's {config.quality.variants}")
        config.quality.variants = wanted
    if args.seeds:
        config.quality.seeds = [int(s) for s in args.seeds.split(",")]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    root = args.root or lake_root(config)
    config.storage.root = str(root)
    if args.root is None:
        build_lake(config, root, log)
    stem = path.stem
    runs = args.results / "runs" / stem
    if not args.evaluate_registered:
        shutil.rmtree(runs, ignore_errors=True)
    report = run_quality(config, runs, args.device, log, args.wait, args.evaluate_registered)
    resolved = path.resolve()
    report["config"] = str(resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved)
    report["command"] = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report["lake"] = str(root)
    plot = args.results / f"{stem}.png"
    save_curves(report, plot)
    report["plot"] = str(plot)
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=1))
    print(markdown_table(report))
    report.pop("curves")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
