"""What a real-time user vector costs a recall replica, in-process (no HTTP, no Serve, no Kafka).

    python benchmarks/realtime_cost.py [--quick]

Builds the Recall replica's own logic (`serve.app.RecallCore`, the live feed off) over an
ML-1M-sized snapshot of random vectors with sequence tails, puts live events for a share of the
users into its recent-items store as the feed would, and times U2I answers for random users in
`snapshot` and `realtime` mode: one request at a time (the cost of one answer), then bursts of
concurrent requests (what a loaded replica sees). In realtime mode each user with a live event
newer than their cached vector costs one model call; the rest are cache hits. Ends with one JSON
line; `load_average_1m` says how busy the machine was. (Outside a Serve replica `@serve.batch`
cannot run: each search and each real-time model call here is a call of its own.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402

from precise.predict.demo import publish_random_snapshot  # noqa: E402

USERS, ITEMS = 6040, 3706


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 3)


async def measure(core: object, users: list[str], burst: int) -> dict:
    """Sequential latencies of one U2I each, then the same users in bursts of `burst` at once."""
    one = []
    for user in users:
        started = time.perf_counter()
        answer = await core.u2i({"user_id": user, "k": 10, "exclude_seen": True})
        one.append(time.perf_counter() - started)
        assert "_error" not in answer, answer
    bursts = []
    for start in range(0, len(users), burst):
        group = users[start:start + burst]
        started = time.perf_counter()

        async def timed(user: str, started: float = started) -> float:
            await core.u2i({"user_id": user, "k": 10, "exclude_seen": True})
            return time.perf_counter() - started

        bursts.extend(await asyncio.gather(*(timed(u) for u in group)))
    return {"sequential_p50_ms": pct(one, 50), "sequential_p99_ms": pct(one, 99),
            "burst_p50_ms": pct(bursts, 50), "burst_p99_ms": pct(bursts, 99), "requests": len(users)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--live-users", type=float, default=0.1, help="share of users with live events")
    parser.add_argument("--burst", type=int, default=16, help="concurrent requests per burst")
    args = parser.parse_args()
    requests = 1000 if args.quick else 5000
    load_start = os.getloadavg()[0]
    from serve.app import RecallCore

    with tempfile.TemporaryDirectory(prefix="precise-rt-cost-") as tmp:
        rng = np.random.default_rng(1)
        tails = {f"u{u}": [f"i{i}" for i in rng.choice(ITEMS, 20, replace=False)] for u in range(USERS)}
        snapshot_ms = int(time.time() * 1000) - 60_000
        publish_random_snapshot(tmp, "cost", users=USERS, items=ITEMS, dim=64, seed=0, model_version="random-0",
                                tails=tails, sequences_until_ms=snapshot_ms)
        results = {}
        for mode in ("snapshot", "realtime"):
            core = RecallCore({"storage": {"root": tmp}, "serve": {"task": "cost", "recent_enabled": False,
                                                                  "user_vector_mode": mode}})

            async def search(request: tuple) -> tuple:  # @serve.batch needs a Serve replica: one query each
                snapshot, queries, k = request
                return snapshot.search(queries, k)

            async def embed(request: tuple) -> object:  # likewise the micro-batched model calls: one each
                snapshot, sequence = request
                return (await asyncio.to_thread(snapshot.embed_sequences, [sequence]))[0]

            core._search_batch = search
            core._embed_batch = embed
            r = random.Random(3)
            live = r.sample(range(USERS), int(args.live_users * USERS))
            for n, user in enumerate(live):
                for j in range(3):
                    core.recent.add(f"u{user}", f"i{r.randrange(ITEMS)}", snapshot_ms + 1_000 + n + j)
            users = [f"u{r.randrange(USERS)}" for _ in range(requests)]
            cold = asyncio.run(measure(core, users, args.burst))  # first requests: model calls for live users
            warm = asyncio.run(measure(core, users, args.burst))  # the same users again: cache hits
            results[mode] = {"first": cold, "again": warm, "cache": {"hits": core.realtime.hits,
                                                                     "misses": core.realtime.misses}}
            core._stop()
    print(json.dumps({"benchmark": "realtime_cost", "users": USERS, "items": ITEMS,
                      "live_user_share": args.live_users, "burst": args.burst, **results,
                      "load_average_1m": {"start": round(load_start, 1), "end": round(os.getloadavg()[0], 1)}}))


if __name__ == "__main__":
    main()
