"""Figure 4a of the paper on replayed streams: share of each day's exposed items that universal
training has seen, with periodical warm-up vs a single warm start.

    python benchmarks/figure4a.py [--quick]     # --quick: the synthetic stream only

Computed from the event streams and the daily schedule (see precise.pipeline.exposure): the
synthetic stream (new items every day) and MovieLens-1M. Prints the tables, saves the plots under
results/, ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from precise.data import SyntheticConfig, generate_synthetic, load_movielens
from precise.pipeline.exposure import cycle_boundaries, exposure_shares, plot_shares

DAY_MS = 86_400_000
SYNTHETIC = SyntheticConfig(users=2000, initial_items=1000, new_items_per_day=200, scenes=4, days=14,
                            events_per_second=0.5, seed=0)  # = configs/synthetic.yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = Path("results")
    out.mkdir(exist_ok=True)
    streams = {"synthetic": (generate_synthetic(SYNTHETIC), ["click"])}
    if not args.quick:
        streams["ml-1m"] = (load_movielens("ml-1m"), ["rate"])
    summary = {}
    for name, (data, actions) in streams.items():
        events = data.events
        bounds = cycle_boundaries(int(events["ts"].min()), int(events["ts"].max()) + 1, DAY_MS)
        shares = exposure_shares(events, bounds, actions)
        table = shares.table()
        print(f"\n{name}: {len(table)} daily cycles")
        print(table.head(15).round(3).to_string(index=False))
        plot_shares(shares, str(out / f"figure4a_{name}.png"), f"Figure 4a on {name}")
        valid = table.dropna()
        summary[name] = {"days": len(table),
                         "periodic_mean": round(float(valid["periodic_warmup"].mean()), 4),
                         "periodic_min_after_day1": round(float(valid["periodic_warmup"].iloc[1:].min()), 4),
                         "once_last": round(float(valid["warm_start_once"].iloc[-1]), 4),
                         "once_mean": round(float(np.mean(valid["warm_start_once"])), 4)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
