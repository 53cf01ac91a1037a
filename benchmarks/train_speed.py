"""Training throughput of the recipe's training step (`precise.train.recipe.train_step`), per variant.

    python benchmarks/train_speed.py [--config configs/quality_ml100k.yaml] [--steps 20]
                                     [--device cpu|cuda] [--root DIR]

On the config's benchmark lake (built once by benchmarks/quality.py's way, or `--root`), sets up
each universal variant with the recipe and times `--steps` optimisation steps (after 3 warm-up
steps) on its real batches: sequences/s and supervised positions/s, by wall clock and per CPU
second (the CPU-time figure is the one to compare on a shared machine), with each variant's speed
as a ratio to id_only measured in the same run. Ends with one JSON line.
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

from precise.config import load_config  # noqa: E402
from precise.model import UNIVERSAL_VARIANTS, build_model  # noqa: E402
from precise.train import recipe  # noqa: E402
from precise.train.data import epoch_batches  # noqa: E402
from quality import DEFAULT_CONFIG, build_lake, lake_root, variant_config  # noqa: E402


def endless(setup: recipe.Setup) -> Iterator[dict[str, torch.Tensor]]:
    p, epoch = setup.payload, 0
    samples = torch.from_numpy(p.samples)
    while True:
        epoch += 1
        yield from epoch_batches(samples, p.kind, p.options.batch_size, p.options.seed, epoch)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, help="the lake (default: the benchmark lake of the config)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if config.quality is None:
        parser.error(f"{args.config} has no `quality:` section")
    root = args.root or lake_root(config)
    if args.root is None:
        build_lake(config, root, lambda line: print(line, file=sys.stderr))

    results = {}
    for name in UNIVERSAL_VARIANTS:
        setup = recipe.setup(variant_config(config, name, 0, root), "universal", start="scratch",
                             registry=None)
        p = setup.payload
        model = build_model(p.model_config, "universal", token_table=p.token_table).to(args.device)
        model.load_state_dict(p.initial_state)
        trainable = recipe.Trainable(model)
        optimizer = recipe.make_optimizer(model, p.options, ())
        stream = endless(setup)
        for _ in range(3):
            recipe.train_step(trainable, {k: v.to(args.device) for k, v in next(stream).items()}, optimizer)
        _sync(args.device)
        sequences = positions = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            batch = next(stream)
            sequences += len(batch["input_ids"])
            positions += int((batch["target_ids"] != 0).sum())
            recipe.train_step(trainable, {k: v.to(args.device) for k, v in batch.items()}, optimizer)
        _sync(args.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[name] = {"seq_per_s": sequences / wall, "positions_per_s": positions / wall,
                         "seq_per_cpu_s": sequences / cpu, "ms_per_step": 1000 * wall / args.steps,
                         "width": p.model_config.width}
        r = results[name]
        print(f"{name:9s} {r['seq_per_s']:8.1f} seq/s {r['positions_per_s']:9.0f} pos/s "
              f"{r['seq_per_cpu_s']:8.1f} seq/CPU-s {r['ms_per_step']:7.1f} ms/step", file=sys.stderr)
    for r in results.values():
        r["ratio_to_id_only"] = r["seq_per_cpu_s"] / results["id_only"]["seq_per_cpu_s"]
    print(json.dumps({"benchmark": "train_speed", "dataset": config.quality.dataset, "device": args.device,
                      "threads": args.threads, "batch_size": config.training.universal.batch_size,
                      "max_len": config.training.model.max_len, "steps": args.steps, "config": str(args.config),
                      "text_model": config.training.text.model, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
