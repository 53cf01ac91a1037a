"""Training throughput: the Ray Train job at 1 and 2 workers vs the plain loop, and one cycle's wall time.

    python benchmarks/train.py [--quick]     # --quick: ML-100k, small model (else ML-1M, default model)

Self-contained: starts a Kafka broker (or uses PRECISE_KAFKA_BOOTSTRAP) and its own token-auth Ray
head on free ports, replays the dataset into fresh topics, then, on one storage root:

1. **one pipeline cycle**, timed with one clock (`cycle_wall_s`): ingest once (Kafka -> lake ->
   sequences), universal training (Ray Train, 1 worker, from scratch), targeted training (Ray
   Train, 1 worker, warm-started from that universal version). The replay before it is the
   producers' side and is not included; nor is cluster start-up. The pipeline
   (`jobs/pipeline.py`) runs the same stages in this order.
2. then `--runs` times, back to back: the same recipe's `fit` without Ray
   (`precise.train.recipe.fit`, the plain loop, in a helper process the benchmark spawns: no Ray
   driver, no dataset in it) on the same lake's samples, model and train config at 1 torch thread
   (= one Ray Train worker); universal training from scratch with Ray
   Train at 1 worker and at 2 workers (DDP over gloo); the plain loop at 2 torch threads.

samples/s = training sequences (one next-item window per user) per second of the training loop over
every epoch after the first (the first is a warm-up: Ray Train starts its helper actors beside it),
summed samples over summed seconds; the measured runs train `--epochs` epochs (default 10 with
--quick) so that the figure covers a few seconds, not one epoch of about a second. For the Ray job
that is the same `recipe.fit` loop inside the worker (over the payload Ray's object store holds: no
Ray Data in the loop), as rank 0 records it in the registered version's history, the per-epoch
evaluation and checkpoint excluded (as for the plain loop, which does not evaluate here).
`*_job_s` is the whole `run_training` call (prepare, worker start-up, every epoch with its
evaluation and checkpoint, registration). Every worker gets `cpus_per_worker: 0.5` and 1 torch
thread, so two workers fit the 2-CPU head. The Kafka broker the benchmark started is stopped after
the cycle (the measured runs read the lake, not Kafka). Text model: `hashed` by default (no LLM
encoding inside the cycle; `--text-model minilm` to include it).

`--runs N` (default 3 with --quick, else 1): step 2 N times; each run's ratios divide by the plain
loop of that run. The JSON keeps one value per figure (the
median of the runs; a ratio's is the median of the per-run ratios) and adds `runs`: per figure
min / median / max and every run's value. Ends with one JSON line; records the 1-minute load
average at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "platform"))

import torch  # noqa: E402

from _stack import kafka_bootstrap  # noqa: E402
from _stats import spread as spread_of  # noqa: E402
from precise.config import PreciseConfig, load_config  # noqa: E402
from precise.data import load_movielens  # noqa: E402
from precise.events.replay import replay  # noqa: E402
from precise.stack import RayHead  # noqa: E402
from precise.stack.process import free_port  # noqa: E402

# --quick: a small model so that the whole run stays within minutes on a loaded 2-core laptop.
QUICK_MODEL = {"fusion": "moe", "max_len": 50, "id_dim": 32, "text_dim": 32, "token_dim": 32,
               "num_layers": 1, "num_negatives": 64}


def bench_config(quick: bool, bootstrap: str, root: str, text_model: str) -> PreciseConfig:
    """configs/ml100k.yaml (quick) or ml1m.yaml, on fresh topics and a private storage root."""
    base = load_config(ROOT / "configs" / ("ml100k.yaml" if quick else "ml1m.yaml"))
    raw = base.model_dump(mode="json")
    tag = uuid.uuid4().hex[:6]
    raw["kafka"].update(bootstrap_servers=bootstrap, events_topic=f"bench-train-ev-{tag}",
                        items_topic=f"bench-train-it-{tag}", dead_letter_topic=f"bench-train-dlq-{tag}")
    raw["storage"] = {"root": root}
    raw["ingest"]["publish_dead_letters"] = False  # nothing to measure there; the lake still keeps rejects
    raw["training"] = {
        "model": QUICK_MODEL if quick else {},
        "text": {"model": text_model, "max_tokens": 8 if quick else 32},
        "universal": {"epochs": 2 if quick else 3, "batch_size": 128},
        "targeted": {"epochs": 1 if quick else 2, "batch_size": 128},
        "num_workers": 1, "cpus_per_worker": 0.5, "threads_per_worker": 1,
    }
    if quick:
        raw["sequences"]["max_len"] = QUICK_MODEL["max_len"]
    return PreciseConfig.model_validate(raw)


def plain_setup(config: PreciseConfig) -> Any:
    """What the Ray job trains on, set up by the same recipe (from scratch, as the jobs above ran)."""
    from precise.train import recipe

    return recipe.setup(config, "universal", start="scratch")


def steady_samples_per_s(history: list[dict[str, Any]]) -> float:
    """Samples per second of the training loop over the epochs after the first: summed samples over
    summed seconds (one record per epoch, as `recipe.fit` writes them)."""
    epochs = [r for r in history if r.get("epoch", 0) >= 2 and "samples_per_s" in r]
    if not epochs:
        raise ValueError("samples/s needs at least two epochs")
    return sum(r["samples"] for r in epochs) / sum(r["seconds"] for r in epochs)


def plain_samples_per_s(payload: Any, threads: int) -> float:
    """The recipe's `fit` without Ray on the same payload: samples/s after the first epoch. Runs in
    the benchmark's helper process (see `main`), which holds neither Ray nor the dataset."""
    from precise.train import recipe

    torch.set_num_threads(threads)
    _, progress = recipe.fit(payload, log=None)
    return steady_samples_per_s(progress.history)


def run_figures(plain_1: float, plain_2: float, one: Any, two: Any) -> dict[str, float]:
    """One run's figures; its ratios divide by the plain loop of the same run."""
    ray_1, ray_2 = (steady_samples_per_s(run.version.metadata["history"]) for run in (one, two))
    return {
        "plain_samples_per_s": round(plain_1, 1),
        "plain_2_threads_samples_per_s": round(plain_2, 1),
        "ray_1_worker_samples_per_s": round(ray_1, 1),
        "ray_2_workers_samples_per_s": round(ray_2, 1),
        "ray_1_worker_vs_plain": round(ray_1 / plain_1, 3),
        "ray_2_workers_vs_plain": round(ray_2 / plain_1, 3),
        "ray_1_worker_job_s": round(one.seconds, 1),
        "ray_2_workers_job_s": round(two.seconds, 1),
        "val_ndcg_at_10_1_worker": round(one.metrics["val_ndcg_at_10"], 4),
        "val_ndcg_at_10_2_workers": round(two.metrics["val_ndcg_at_10"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ML-100k and a small model (else ML-1M)")
    parser.add_argument("--text-model", default="hashed", help="precise.text model for the token table")
    parser.add_argument("--runs", type=int, default=None,
                        help="measure each throughput figure this many times (default: 3 with --quick, else 1)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of each measured run (default: 10 with --quick, else 3); the first is a warm-up")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else (3 if args.quick else 1)
    epochs = args.epochs if args.epochs is not None else (10 if args.quick else 3)
    if runs < 1:
        parser.error("--runs must be >= 1")
    if epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up, not measured)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    dataset = load_movielens("ml-100k" if args.quick else "ml-1m")
    out: dict[str, Any] = {"dataset": dataset.name, "events": len(dataset.events)}

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="precise-bench-train-"))
        broker = stack.enter_context(contextlib.ExitStack())  # closed after the cycle, or here if it fails
        bootstrap = broker.enter_context(kafka_bootstrap())
        gcs = free_port()
        head = RayHead(Path(tmp) / "ray", gcs_port=gcs, dashboard_port=free_port(), client_port=free_port(),
                       agent_port=free_port(), metrics_port=free_port(), num_cpus=2,
                       temp_dir=Path(f"/tmp/pr-bench-{gcs}"))  # short: unix socket path limit
        head.start()
        os.environ.update(head.client_env())
        import ray

        try:
            from precise.ingest.job import IngestJob, connect_ray
            from precise.train.ray_job import run_training

            connect_ray()  # workers import this checkout's `precise`
            config = bench_config(args.quick, bootstrap, str(Path(tmp) / "root"), args.text_model)
            replay(dataset, config.kafka, progress=False)

            started = time.monotonic()
            ingest = IngestJob(config).run_once()
            ingest_s = time.monotonic() - started
            universal = run_training(config, "universal", full=True, num_workers=1)
            targeted = run_training(config, "targeted", num_workers=1)
            cycle_wall_s = time.monotonic() - started
            broker.close()  # the measured runs read the lake: no broker working beside them

            config = config.model_copy(deep=True)
            config.training.universal.epochs = epochs
            setup = plain_setup(config)
            # The plain loop in a process of its own, as lean as a Ray worker: not this one, which
            # holds a Ray driver and the dataset, and where it measured slower (docs/performance.md).
            plain_pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")))

            def plain(threads: int) -> float:
                return plain_pool.submit(plain_samples_per_s, setup.payload, threads).result()

            measured: list[dict[str, float]] = []
            for n in range(runs):
                # One run: the plain loop and the Ray jobs back to back, so its ratios share one load.
                plain_1 = plain(threads=1)
                one = run_training(config, "universal", full=True, num_workers=1)
                two = run_training(config, "universal", full=True, num_workers=2)
                plain_2 = plain(threads=2)
                measured.append(run_figures(plain_1, plain_2, one, two))
                print(f"run {n + 1}/{runs}: " + json.dumps(measured[-1]), file=sys.stderr, flush=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            head.stop()
            shutil.rmtree(head.temp_dir, ignore_errors=True)

    spread = {key: {**spread_of(values), "values": values}
              for key in measured[0] for values in [[run[key] for run in measured]]}
    out.update({
        "samples_per_epoch": len(setup.payload.samples),
        "model": QUICK_MODEL if args.quick else "ModelConfig defaults",
        "epochs": epochs,
        "samples_per_s_over": f"epochs 2-{epochs} of each measured run (epoch 1 is a warm-up)",
        # the medians of the runs (the validation metrics go under val_ndcg_at_10 below)
        **{key: figures["median"] for key, figures in spread.items() if not key.startswith("val_")},
        "runs": {"count": runs, **spread},
        "ingest_s": round(ingest_s, 1),
        "universal_s": round(universal.seconds, 1),
        "targeted_s": round(targeted.seconds, 1),
        "cycle_wall_s": round(cycle_wall_s, 1),
        "cycle_includes": "ingest once + universal (Ray Train, 1 worker) + targeted (Ray Train, 1 worker)",
        "ingested_events": ingest["events"],
        "val_ndcg_at_10": {"cycle_universal": round(universal.metrics["val_ndcg_at_10"], 4),
                           "ray_1_worker": spread["val_ndcg_at_10_1_worker"]["median"],
                           "ray_2_workers": spread["val_ndcg_at_10_2_workers"]["median"]},
        "load_avg_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)},
        "cpus": os.cpu_count(),
    })
    print(f"plain {out['plain_samples_per_s']:,.0f} samples/s (2 threads {out['plain_2_threads_samples_per_s']:,.0f}); "
          f"Ray Train 1 worker {out['ray_1_worker_samples_per_s']:,.0f} ({out['ray_1_worker_vs_plain']:.2f}x), "
          f"2 workers {out['ray_2_workers_samples_per_s']:,.0f} ({out['ray_2_workers_vs_plain']:.2f}x): medians of "
          f"{runs} run(s); cycle {cycle_wall_s:,.0f} s ({dataset.name})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
