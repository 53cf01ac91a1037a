"""The platform on the local multi-host cluster (scripts/cluster): rates on 1 vs 3 Ray nodes, then
the whole pipeline with node, broker and network faults (precise.stack.scenario). Needs root.

    sudo .venv/bin/python benchmarks/cluster.py [--runs 1] [--keep]

1. Brings the harness up (3 Ray nodes in network namespaces, from an environment without the
   project; 3 KRaft brokers, RF 3, min ISR 2) unless it is up.
2. Rates, fault-free, in this run: ingest (`jobs/ingest.py --once`, a fresh lake) and universal
   training (`jobs/universal.py --full`) with the head alone (worker nodes stopped; 1 training
   worker) and with all 3 nodes (2 training workers, 2 CPUs each). `--runs` > 1 reports the median
   (min, max) of each rate. All "hosts" share this machine's cores: these are not independent
   machines' rates (the load average is reported).
3. The fault scenario (precise.stack.scenario.run_scenario).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from precise.stack.cluster import BROKERS, RAY_NODES, LocalCluster
from precise.stack.scenario import measure_rates, run_scenario, stream


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=".precise/cluster")
    parser.add_argument("--runs", type=int, default=1, help="rate measurements per node count")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up")
    parser.add_argument("--skip-rates", action="store_true")
    parser.add_argument("--link-down-s", type=float, default=20.0)
    args = parser.parse_args()
    cluster = LocalCluster(Path(args.state_dir))
    work = cluster.state_dir / "bench" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()[0]]
    began = time.monotonic()
    up = cluster.up()
    rates: dict[int, list[dict]] = {1: [], 3: []}
    try:
        if not args.skip_rates:
            data = stream(users=300, days=4, seed=11)
            for _ in range(args.runs):
                for nodes in (1, 3):
                    rates[nodes].append(measure_rates(cluster, work, nodes, data))
                    print(json.dumps(rates[nodes][-1]), file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
        scenario = run_scenario(cluster, work, link_down_s=args.link_down_s)
        load.append(os.getloadavg()[0])
    finally:
        if not args.keep:
            cluster.down()
    (work / "scenario.json").write_text(json.dumps(scenario, indent=1, default=str))

    def rate(nodes: int, key: str) -> dict[str, float] | None:
        values = [r[key] for r in rates[nodes] if r.get(key) is not None]
        return spread(values) if values else None

    result = {
        "nodes": len(RAY_NODES), "brokers": len(BROKERS),
        "train_worker_nodes": scenario["train_worker_nodes"],
        "events_produced": scenario["events_produced"], "events_lost": scenario["events_lost"],
        "events_duplicated": scenario["events_duplicated"],
        "train_resumed_from_epoch": scenario["train_resumed_from_epoch"],
        "serve_requests": scenario["serve_requests"], "serve_failed_requests": scenario["serve_failed_requests"],
        "ingest_events_per_s_1_node": rate(1, "ingest_events_per_s"),
        "ingest_events_per_s_3_nodes": rate(3, "ingest_events_per_s"),
        "train_samples_per_s_1_node": rate(1, "train_samples_per_s"),
        "train_samples_per_s_3_nodes": rate(3, "train_samples_per_s"),
        "rate_runs": args.runs, "rate_events": rates[1][0]["events"] if rates[1] else None,
        "killed": {"train_host": scenario["killed_train_host"], "brokers": scenario["broker_faults"],
                   "link": scenario["link_outage"], "serve_host": scenario["killed_serve_host"]},
        "consistency": scenario["consistency"], "cluster_up_s": up["seconds"],
        "load_average_1m": [round(x, 1) for x in load], "cpus": os.cpu_count(),
        "gpu": "none in this session: the use_gpu run was not measured",
        "wall_s": round(time.monotonic() - began, 1), "details": str(work / "scenario.json"),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
