"""Training throughput: the Ray Train job at 1 and 2 workers vs the plain loop, and one cycle's wall time.

    python benchmarks/train.py [--quick]     # --quick: ML-100k, small model (else ML-1M, default model)

Self-contained: starts a Kafka broker (or uses PRECISE_KAFKA_BOOTSTRAP) and its own token-auth Ray
head on free ports, replays the dataset into fresh topics, then, on one storage root:

1. **one pipeline cycle**, timed with one clock (`cycle_wall_s`): ingest once (Kafka -> lake ->
   sequences), universal training (Ray Train, 1 worker, from scratch), targeted training (Ray
   Train, 1 worker, warm-started from that universal version). The replay before it is the
   producers' side and is not included; nor is cluster start-up. The pipeline
   (`jobs/pipeline.py`) runs the same stages in this order.
2. universal training again with 2 workers (DDP over gloo), from scratch;
3. the same recipe's `fit` in this process, without Ray (`precise.train.recipe.fit`), on the same
   lake's samples, model and train config, at 1 torch thread (= one Ray Train worker) and 2.

samples/s = training sequences (one next-item window per user) per second of the *last* epoch's
training loop (the first epoch is a warm-up); for the Ray job that is the loop inside the worker,
Ray Data streaming included, the per-epoch evaluation and checkpoint excluded (as for the plain
loop, which does not evaluate here). `*_job_s` is the whole `run_training` call (prepare, worker
start-up, every epoch with its evaluation and checkpoint, registration). Every worker gets
`cpus_per_worker: 0.5` and 1 torch thread, so two workers fit a 2-CPU head beside Ray Data's tasks.
Text model: `hashed` by default (no LLM encoding inside the cycle; `--text-model minilm` to include
it). Ends with one JSON line; also records the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "platform"))

import torch  # noqa: E402

from _stack import kafka_bootstrap  # noqa: E402
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


def plain_samples_per_s(setup: Any, threads: int) -> float:
    """The recipe's `fit` in this process (no Ray), same payload: the last epoch's samples/s."""
    from precise.train import recipe

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, progress = recipe.fit(setup.payload, log=None)
    finally:
        torch.set_num_threads(previous)
    return next(r for r in reversed(progress.history) if "samples_per_s" in r)["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ML-100k and a small model (else ML-1M)")
    parser.add_argument("--text-model", default="hashed", help="precise.text model for the token table")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    dataset = load_movielens("ml-100k" if args.quick else "ml-1m")
    out: dict[str, Any] = {"dataset": dataset.name, "events": len(dataset.events)}

    with kafka_bootstrap() as bootstrap, tempfile.TemporaryDirectory(prefix="precise-bench-train-") as tmp:
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

            two = run_training(config, "universal", full=True, num_workers=2)
            setup = plain_setup(config)
            plain_1 = plain_samples_per_s(setup, threads=1)
            plain_2 = plain_samples_per_s(setup, threads=2)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            head.stop()
            shutil.rmtree(head.temp_dir, ignore_errors=True)

    ray_1, ray_2 = universal.metrics["samples_per_s"], two.metrics["samples_per_s"]
    out.update({
        "samples_per_epoch": len(setup.payload.samples),
        "model": QUICK_MODEL if args.quick else "ModelConfig defaults",
        "epochs": config.training.universal.epochs,
        "plain_samples_per_s": round(plain_1, 1),
        "plain_2_threads_samples_per_s": round(plain_2, 1),
        "ray_1_worker_samples_per_s": round(ray_1, 1),
        "ray_2_workers_samples_per_s": round(ray_2, 1),
        "ray_1_worker_vs_plain": round(ray_1 / plain_1, 3),
        "ray_2_workers_vs_plain": round(ray_2 / plain_1, 3),
        "ray_1_worker_job_s": round(universal.seconds, 1),
        "ray_2_workers_job_s": round(two.seconds, 1),
        "ingest_s": round(ingest_s, 1),
        "universal_s": round(universal.seconds, 1),
        "targeted_s": round(targeted.seconds, 1),
        "cycle_wall_s": round(cycle_wall_s, 1),
        "cycle_includes": "ingest once + universal (Ray Train, 1 worker) + targeted (Ray Train, 1 worker)",
        "ingested_events": ingest["events"],
        "val_ndcg_at_10": {"ray_1_worker": round(universal.metrics["val_ndcg_at_10"], 4),
                           "ray_2_workers": round(two.metrics["val_ndcg_at_10"], 4)},
        "load_avg_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)},
        "cpus": os.cpu_count(),
    })
    print(f"plain {plain_1:,.0f} samples/s (2 threads {plain_2:,.0f}); Ray Train 1 worker {ray_1:,.0f}, "
          f"2 workers {ray_2:,.0f}; cycle {cycle_wall_s:,.0f} s ({dataset.name})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
