"""Offline quality of the PRECISE variants (paper tables III, IV, VI, VII) on MovieLens.

    python benchmarks/quality.py [--config configs/<file>.yaml] [--quick] [--device cpu|cuda]

Trains every variant of the config with the plain loop, selects each one's best epoch on the
validation item, evaluates on the test item (leave-one-out, full ranking over all items), prints a
Markdown table, saves training curves under results/, and ends with one JSON line:
{"dataset", "protocol": {sequence length, negatives, epochs, seeds, ...}, "results": {variant:
{"R@10", ..., "N@50", "cold": {...}, "history_masked": {...}}}}.

Universal variants (id_only, llm_only, pool, ut) are evaluated on the all-scene task; targeted
variants (tt, ut_tt) on the target task of the config (by default: the next *liked* movie), where
`ut_target` (the universal model alone) and popularity give the reference rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from precise.data import load_movielens  # noqa: E402
from precise.model import TARGETED_VARIANTS, UNIVERSAL_VARIANTS, ModelConfig, build_model  # noqa: E402
from precise.model.text_adapter import (  # noqa: E402
    load_token_states,
    load_token_table,
    save_token_table,
    token_table,
)
from precise.train.evaluate import (  # noqa: E402
    DEFAULT_KS,
    cold_items,
    evaluate_model,
    evaluate_scorer,
    popularity_scorer,
)
from precise.train.loop import History, TrainConfig, fit  # noqa: E402
from precise.train.sequences import (  # noqa: E402
    NextItemBatches,
    TargetBatches,
    build_sequences,
    item_counts,
    leave_one_out,
)

DEFAULT_CONFIG = REPO / "configs" / "quality_ml1m.yaml"
QUICK_CONFIG = REPO / "configs" / "quality_ml100k_quick.yaml"
METRIC_KEYS = [f"{m}@{k}" for m in ("R", "N") for k in DEFAULT_KS]


def load_config(path: Path) -> dict[str, Any]:
    with open(path) as f:
        config = yaml.safe_load(f)
    required = {
        "dataset",
        "seeds",
        "sequence",
        "target",
        "text",
        "model",
        "universal",
        "targeted",
        "variants",
    }
    missing = required - set(config)
    if missing:
        raise ValueError(f"{path}: missing config sections {sorted(missing)}")
    unknown = set(config["variants"]) - set(UNIVERSAL_VARIANTS) - set(TARGETED_VARIANTS)
    if unknown:
        raise ValueError(f"{path}: unknown variants {sorted(unknown)}")
    return config


def _mean_results(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Average nested metric dicts over seeds (counts such as `users` are equal across seeds)."""
    out: dict[str, Any] = {}
    for key, value in per_seed[0].items():
        if isinstance(value, dict):
            out[key] = _mean_results([r[key] for r in per_seed])
        elif isinstance(value, float):
            out[key] = float(np.mean([r[key] for r in per_seed]))
        else:
            out[key] = value
    return out


def run_quality(
    config: dict[str, Any],
    device: str = "cpu",
    amp: str | None = None,
    log: Any = print,
    token_cache: Path | None = None,
    prepare_only: bool = False,
) -> dict[str, Any]:
    """Train and evaluate the config's variants; return the JSON-ready report.

    `token_cache`: a folder where the PCA-projected token table is stored and looked up, so the
    LLM runs once per (dataset, text model, tokens, width) and the table can be carried to another
    machine. `prepare_only`: build (and cache) the token table, then return before training.
    """
    started = time.perf_counter()
    seq_cfg, target_cfg = config["sequence"], config["target"]
    max_len, target_len = int(seq_cfg["max_len"]), int(target_cfg.get("max_len", seq_cfg["max_len"]))
    ev = config.get("eval", {})
    ks = tuple(ev.get("ks", DEFAULT_KS))
    batch_users = int(ev.get("batch_users", 1024))

    dataset = load_movielens(config["dataset"])
    index, seqs = build_sequences(
        dataset, action=seq_cfg.get("action", "rate"),
        target_action=target_cfg.get("action"), target_scene=target_cfg.get("scene"),
    )  # fmt: skip
    split = leave_one_out(seqs, max_len=max_len, target_max_len=target_len)
    counts = item_counts(split.train, index.num_items)
    cold = cold_items(counts, hot_fraction=float(ev.get("hot_fraction", 0.2)))
    log(
        f"{config['dataset']}: {len(seqs.users)} users, {index.num_items} items; target task: "
        f"{len(split.target_test)} test users; {int(cold.sum())} cold items"
    )

    variants = list(config["variants"])
    base = ModelConfig.from_dict(config["model"], num_items=index.num_items, max_len=max_len)
    needs_text = any(v in TARGETED_VARIANTS or UNIVERSAL_VARIANTS.get(v) != "id" for v in variants)
    tokens = None
    if needs_text:
        text = config["text"]
        max_tokens = int(text.get("max_tokens", 32))
        cached = None
        if token_cache is not None:
            cache_file = (
                token_cache / f"{config['dataset']}_{text['model']}_m{max_tokens}_d{base.token_dim}.npz"
            )
            cached = load_token_table(cache_file, index.item_ids)
        if cached is not None:
            tokens = cached[:2]
            log(f"token table: {cache_file} ({cached[2]}, {tokens[0].shape})")
        else:
            texts = dict(zip(dataset.items["item_id"], dataset.items["text"], strict=True))
            t0 = time.perf_counter()
            states = load_token_states(texts, text["model"], max_tokens)
            tokens = token_table(states, index.item_ids, base.token_dim)
            log(f"token states: {states.model}, {states.states.shape} -> table {tokens[0].shape} "
                f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
            if token_cache is not None:
                save_token_table(cache_file, *tokens, index.item_ids, states.model)
                log(f"token table saved to {cache_file}")
    if prepare_only:
        return {"benchmark": "quality", "dataset": config["dataset"], "prepared": tokens is not None}

    def evaluate(model: torch.nn.Module, data: Any) -> dict[str, Any]:
        return evaluate_model(model, data, cold, ks, batch_users, device).as_dict()

    def train(
        model: torch.nn.Module,
        batches: Any,
        train_cfg: TrainConfig,
        valid: Any,
        name: str,
        first: bool = False,
    ) -> History:
        def validate(m: torch.nn.Module) -> float:
            return evaluate_model(m, valid, None, ks, batch_users, device).metrics["N@10"]

        model = model.to(device)
        return fit(
            model,
            batches,
            train_cfg,
            validate=validate,
            device=device,
            log=log,
            name=name,
            validate_first=first,
        )

    seeds = [int(s) for s in config["seeds"]]
    per_seed: dict[str, list[dict[str, Any]]] = {}
    training: dict[str, list[dict[str, Any]]] = {}
    universal_batches = None
    target_batches = None
    for seed in seeds:
        ut_states: dict[str, dict[str, torch.Tensor]] = {}
        universal_names = [v for v in variants if v in UNIVERSAL_VARIANTS]
        if "ut_tt" in variants and "ut" not in universal_names:
            universal_names.append("ut")  # ut_tt warm-starts from it
        for name in universal_names:
            train_cfg = TrainConfig.from_dict(config["universal"], seed=seed, amp=amp)
            if universal_batches is None:
                universal_batches = NextItemBatches(split.train, max_len, train_cfg.batch_size)
            torch.manual_seed(seed)
            model = build_model(base.with_fusion(UNIVERSAL_VARIANTS[name]), "universal", tokens)
            history = train(model, universal_batches, train_cfg, split.valid, name)
            training.setdefault(name, []).append(_training_record(history))
            if name in variants:
                per_seed.setdefault(name, []).append(evaluate(model, split.test))
            if name == "ut":
                ut_states["ut"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if "ut_tt" in variants:
                    per_seed.setdefault("ut_target", []).append(evaluate(model, split.target_test_universal))
            del model
        for name in [v for v in variants if v in TARGETED_VARIANTS]:
            # ut_tt fine-tunes a warm start: its own overrides (e.g. a lower lr), and its starting
            # point is validated too, so fine-tuning that does not help cannot make it worse.
            overrides = config.get("targeted_warm_start", {}) if name == "ut_tt" else {}
            train_cfg = TrainConfig.from_dict({**config["targeted"], **overrides}, seed=seed, amp=amp)
            if target_batches is None:
                target_batches = TargetBatches(split.target_train, target_len, train_cfg.batch_size)
            torch.manual_seed(seed)
            tt_config = ModelConfig.from_dict(
                {**config["model"], **config.get("targeted_model", {})},
                num_items=index.num_items, max_len=target_len, fusion="moe",
            )  # fmt: skip
            model = build_model(tt_config, "targeted", tokens)
            if name == "ut_tt":
                copied = model.warm_start(ut_states["ut"])
                log(f"[ut_tt] warm-started {len(copied)} tensors from ut")
            history = train(model, target_batches, train_cfg, split.target_valid, name, first=name == "ut_tt")
            training.setdefault(name, []).append(_training_record(history))
            per_seed.setdefault(name, []).append(evaluate(model, split.target_test))
            del model

    popularity = popularity_scorer(counts, device)
    results = {name: _mean_results(runs) for name, runs in per_seed.items()}
    results["popularity"] = evaluate_scorer(popularity, split.test, cold, ks, batch_users, device).as_dict()
    if any(v in TARGETED_VARIANTS for v in variants):
        results["popularity_target"] = evaluate_scorer(
            popularity, split.target_test, cold, ks, batch_users, device
        ).as_dict()
    tcfg, gcfg = TrainConfig.from_dict(config["universal"]), TrainConfig.from_dict(config["targeted"])
    protocol = {
        "split": "leave-one-out per user: last item test, second-to-last validation (best epoch by val N@10)",
        "ranking": "full ranking over all items; history NOT masked (history_masked: HSTU-repo style)",
        "sequence": {"action": seq_cfg.get("action", "rate"), "max_len": max_len},
        "target_task": {
            "action": target_cfg.get("action"), "scene": target_cfg.get("scene"), "max_len": target_len,
        },
        "negatives": {
            "uniform": base.num_negatives, "per_position": not base.shared_negatives,
            "in_batch": base.in_batch_negatives, "temperature": base.temperature,
        },
        "epochs": {"universal": tcfg.epochs, "targeted": gcfg.epochs},
        "batch_size": {"universal": tcfg.batch_size, "targeted": gcfg.batch_size},
        "lr": {
            "universal": tcfg.lr, "targeted": gcfg.lr,
            "ut_tt": config.get("targeted_warm_start", {}).get("lr", gcfg.lr),
        },
        "freeze_tokens_epochs": tcfg.freeze_tokens_epochs,
        "seeds": seeds,
        "model": {k: v for k, v in asdict(base).items() if k not in ("fusion", "num_items")},
        "text_model": config["text"]["model"] if needs_text else None,
        "cold": "targets among the 80% least popular items by training interactions (count >= 1)",
        "users": len(seqs.users), "items": index.num_items,
        "device": device, "amp": amp,
    }  # fmt: skip
    return {
        "benchmark": "quality",
        "dataset": config["dataset"],
        "protocol": protocol,
        "results": results,
        "training": {name: _mean_training(runs) for name, runs in training.items()},
        "curves": {name: runs[0] for name, runs in training.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _training_record(history: History) -> dict[str, Any]:
    return history.as_dict()


def _mean_training(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "best_epoch": float(np.mean([r["best_epoch"] for r in runs])),
        "best_val_N@10": float(np.mean([r["best_metric"] for r in runs])),
        "train_seconds": float(np.mean([sum(r["epoch_seconds"]) for r in runs])),
        "samples_per_s": float(np.mean([np.median(r["samples_per_s"]) for r in runs])),
    }


def markdown_table(report: dict[str, Any]) -> str:
    results = report["results"]
    lines = [
        "| variant | task | "
        + " | ".join(METRIC_KEYS)
        + " | cold R@10 | cold N@10 | masked R@10 | masked N@10 |",
        "|---|---|" + "---|" * (len(METRIC_KEYS) + 4),
    ]
    for name, r in results.items():
        task = "target" if name in TARGETED_VARIANTS or name.endswith("_target") else "all-scene"
        cells = [f"{r[k]:.4f}" for k in METRIC_KEYS]
        cells += [f"{r['cold']['R@10']:.4f}", f"{r['cold']['N@10']:.4f}"]
        cells += [f"{r['history_masked']['R@10']:.4f}", f"{r['history_masked']['N@10']:.4f}"]
        lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, curve in report["curves"].items():
        style = "--" if name in TARGETED_VARIANTS else "-"  # targeted: other loss, other task
        epochs = range(1, len(curve["train_loss"]) + 1)
        ax_loss.plot(epochs, curve["train_loss"], style, label=name)
        ax_val.plot(curve["val_epochs"], curve["val_metric"], style, marker="o", markersize=3, label=name)
    ax_loss.set(title="training loss (UT: sampled softmax, TT dashed: BPR)", xlabel="epoch", ylabel="loss")
    ax_val.set(title="validation NDCG@10, full ranking (TT dashed: target task)", xlabel="epoch")
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
    parser.add_argument("--quick", action="store_true", help=f"ML-100k, few epochs ({QUICK_CONFIG.name})")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default=None, choices=["bf16"], help="autocast matmuls (CUDA)")
    parser.add_argument("--text-model", help="override text.model (e.g. 'hashed' before precise.text lands)")
    parser.add_argument("--variants", help="comma-separated subset of the config's variants")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--token-cache", type=Path, help="folder to keep/find the projected token table")
    parser.add_argument("--prepare-tokens", action="store_true", help="only build the token table (cache)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = True  # as the HSTU ML-1M configs (enable_tf32)
        torch.backends.cudnn.allow_tf32 = True
    path = args.config or (QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    config = load_config(path)
    if args.text_model:
        config["text"]["model"] = args.text_model
    if args.variants:
        config["variants"] = [v for v in config["variants"] if v in args.variants.split(",")]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.prepare_tokens and args.token_cache is None:
        parser.error("--prepare-tokens needs --token-cache")
    report = run_quality(config, args.device, args.amp, log, args.token_cache, args.prepare_tokens)
    if args.prepare_tokens:
        print(json.dumps(report))
        return 0
    report["config"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    stem = f"quality_{config['dataset']}{'_quick' if path == QUICK_CONFIG else ''}"
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
