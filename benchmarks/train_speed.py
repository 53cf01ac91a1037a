"""Training throughput of the plain loop (`precise.train.loop.train_step`), per variant.

    python benchmarks/train_speed.py [--config configs/quality_ml1m.yaml] [--dataset ml-1m]
                                     [--steps 20] [--device cpu|cuda]

Times `--steps` optimisation steps (after 3 warm-up steps) of each universal variant of the config
on real batches and reports sequences/s and supervised positions/s, by wall clock and per CPU
second (the CPU-time figure is the one to compare on a shared machine), with each variant's speed
as a ratio to id_only measured in the same run. The Ray Train jobs compare against these numbers.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))

from precise.data import load_movielens  # noqa: E402
from precise.model import UNIVERSAL_VARIANTS, ModelConfig, build_model  # noqa: E402
from precise.model.text_adapter import load_token_states, token_table  # noqa: E402
from precise.train.loop import TrainConfig, make_optimizer, to_device, train_step  # noqa: E402
from precise.train.sequences import NextItemBatches, build_sequences, leave_one_out  # noqa: E402
from quality import DEFAULT_CONFIG, load_config  # noqa: E402


def endless(batches: NextItemBatches, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from batches.epoch(generator)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--dataset", help="override the config's dataset")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-model", default="hashed", help="token states (hashed: stand-in, same shapes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    dataset = load_movielens(args.dataset or config["dataset"])
    max_len = int(config["sequence"]["max_len"])
    index, seqs = build_sequences(dataset)
    split = leave_one_out(seqs, max_len=max_len)
    train_cfg = TrainConfig.from_dict(config["universal"])
    batches = NextItemBatches(split.train, max_len, train_cfg.batch_size)
    base = ModelConfig.from_dict(config["model"], num_items=index.num_items, max_len=max_len)
    texts = dict(zip(dataset.items["item_id"], dataset.items["text"], strict=True))
    states = load_token_states(texts, args.text_model, int(config["text"].get("max_tokens", 32)))
    tokens = token_table(states, index.item_ids, base.token_dim)

    results = {}
    for name, fusion in UNIVERSAL_VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(base.with_fusion(fusion), "universal", tokens).to(args.device)
        optimizer = make_optimizer(model, train_cfg)
        stream = endless(batches, torch.Generator().manual_seed(0))
        for _ in range(3):
            train_step(model, to_device(next(stream), args.device), optimizer)
        _sync(args.device)
        sequences = positions = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            batch = next(stream)
            sequences += len(batch["input_ids"])
            positions += int((batch["target_ids"] != 0).sum())
            train_step(model, to_device(batch, args.device), optimizer)
        _sync(args.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[name] = {
            "seq_per_s": sequences / wall,
            "positions_per_s": positions / wall,
            "seq_per_cpu_s": sequences / cpu,
            "ms_per_step": 1000 * wall / args.steps,
            "width": model.config.width,
        }
        r = results[name]
        line = f"{name:9s} {r['seq_per_s']:8.1f} seq/s {r['positions_per_s']:9.0f} pos/s "
        print(line + f"{r['seq_per_cpu_s']:8.1f} seq/CPU-s {r['ms_per_step']:7.1f} ms/step", file=sys.stderr)
    for r in results.values():
        r["ratio_to_id_only"] = r["seq_per_cpu_s"] / results["id_only"]["seq_per_cpu_s"]
    report = {
        "benchmark": "train_speed",
        "dataset": dataset.name,
        "device": args.device,
        "threads": args.threads,
        "batch_size": train_cfg.batch_size,
        "max_len": max_len,
        "steps": args.steps,
        "config": str(args.config),
        "text_model": args.text_model,
        "results": results,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
