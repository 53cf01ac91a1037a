"""Does freshness help? An offline streaming evaluation on ML-100k (CPU), through the platform's code.

One universal model is trained with the one recipe (`precise.train.recipe`) on the events before a
day boundary T0 (the last daily cycle), registered, and loaded back as a snapshot loads it
(`RegistryEmbedder`: its model, its vocabulary, its window). Every event after T0 (the first
`max_events` in time) is then a test case, ranked twice by that same model over every item
(`precise.train.evaluate.evaluate_model`, full ranking):

- `daily`: the user's vector from their events before the newest day boundary before the event
  (what the last daily cycle published, T0 or later: daily user snapshots of the same model);
- `realtime`: the user's vector from every event before it (what `serve.user_vector_mode:
  realtime` computes: the snapshot's tail plus the live events).

Cases whose user has no event before that day boundary are left out of both (no daily vector to
compare with; counted in `skipped_no_daily_vector`), as are targets the model's vocabulary lacks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DAY_MS = 86_400_000


def _config(quick: bool) -> Any:
    from precise.config import load_config

    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "configs" / "quality_ml100k_quick.yaml")
    t = config.training
    t.model = t.model.model_copy(update={"fusion": "id"})  # ID tower only: no LLM token states needed
    t.universal = t.universal.model_copy(update={"epochs": 8 if quick else 12, "eval_every": 2, "seed": 42})
    return config


def streaming_eval(quick: bool, work: Path, max_events: int, log: Any = print) -> dict[str, Any]:
    from benchmarks.quality import build_lake, lake_root

    from precise.predict.model_embedder import RegistryEmbedder
    from precise.store.registry import ModelRegistry
    from precise.store.sequences import read_sequences
    from precise.train import recipe
    from precise.train.data import eval_set
    from precise.train.evaluate import evaluate_model

    started = time.perf_counter()
    config = _config(quick)
    root = lake_root(config)
    config.storage.root = str(root)
    build_lake(config, root, log)  # the dataset through Kafka and the ingest job, kept between runs
    here = Path(__file__).resolve().parent  # build_lake put benchmarks/ first: `serve` must stay the app
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    family = config.sequences.all_scene.name
    table = read_sequences(str(root), family).select(["user_id", "item_ids", "ts"]).to_pylist()
    times = np.sort(np.concatenate([np.asarray(r["ts"], np.int64) for r in table]))
    t0 = int(times[int(0.9 * len(times))]) // DAY_MS * DAY_MS  # the last daily cycle: 90% of events before it

    work.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(work / "registry")
    setup = recipe.setup(config, "universal", start="scratch", until_ts=t0, registry=registry)
    state, progress = recipe.fit(setup.payload, device="cpu", log=None)
    version = recipe.register(setup, state, progress, config, registry)
    embedder = RegistryEmbedder(root=str(work / "registry"), kind="universal", task=None, version=version.version)
    lookup, max_len = embedder.lookup, embedder.max_len
    trained_s = time.perf_counter() - started

    cases = sorted((ts, n, user["user_id"], user["item_ids"][n]) for user in table
                   for n, ts in enumerate(user["ts"]) if ts >= t0)
    by_user = {user["user_id"]: user for user in table}
    users, daily, realtime, labels = [], [], [], []
    skipped = {"no_daily_vector": 0, "unknown_target": 0}
    for ts, n, user_id, item in cases:
        if len(labels) == max_events:
            break
        if item not in lookup:
            skipped["unknown_target"] += 1
            continue
        user = by_user[user_id]
        boundary = ts // DAY_MS * DAY_MS  # the newest daily cycle at or before the event
        before_day = [i for i, t in zip(user["item_ids"][:n], user["ts"][:n], strict=True) if t < boundary]
        known_day = [i for i in before_day if i in lookup]
        if not known_day:
            skipped["no_daily_vector"] += 1
            continue
        users.append(user_id)
        daily.append(known_day)
        realtime.append([i for i in user["item_ids"][:n] if i in lookup])  # every event before this one
        labels.append(item)
    results = {}
    for name, histories in (("daily", daily), ("realtime", realtime)):
        data = eval_set(users, histories, labels, lookup, max_len)
        metrics = evaluate_model(embedder.model, data, None, (10,), config.training.eval_batch_users).metrics
        results[name] = {"R@10": round(metrics["R@10"], 4), "N@10": round(metrics["N@10"], 4)}
    return {**results, "cases": len(labels), "skipped_no_daily_vector": skipped["no_daily_vector"],
            "skipped_unknown_target": skipped["unknown_target"], "last_daily_cycle_ts": t0,
            "model": version.ref, "model_best_val": progress.best_metric, "epochs": config.training.universal.epochs,
            "train_s": round(trained_s, 1), "wall_s": round(time.perf_counter() - started, 1)}
