"""Figure 4a of the paper: the share of items exposed in a cycle that universal training has seen.

An item is "trained by UT" at boundary b when it occurs in the universal training events before b
(UT is incremental, so everything before b has passed through some version of it). The targeted
model of cycle d starts from:

* periodical warm-up: the newest UT, trained up to the start of cycle d;
* warm start once: the UT of the first cycle, forever.

So the share for cycle d is |exposed(d) ∩ trained(b)| / |exposed(d)| with b the start of cycle d
(periodic) or the first boundary (once). It depends only on the event stream and the schedule,
which is why it can be computed for long streams (ML-1M's 1,000+ days) without training a model
per day; the orchestrator reports the same measure for the cycles it actually trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ExposureShares:
    boundaries: list[int]  # cycle starts (epoch ms); cycle d = [boundaries[d], boundaries[d + 1])
    exposed: list[int]  # distinct items exposed per cycle
    periodic: list[float]  # share trained by UT with periodical warm-up
    once: list[float]  # share trained by UT with a single warm start at the first boundary

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"cycle": range(1, len(self.exposed) + 1), "start_ts": self.boundaries[:-1],
                             "exposed_items": self.exposed, "periodic_warmup": self.periodic,
                             "warm_start_once": self.once})


def cycle_boundaries(first_ts: int, last_ts: int, period_ms: int, warmup_cycles: int = 1) -> list[int]:
    """Boundaries aligned to `period_ms` from the first event; the first `warmup_cycles` periods
    are history only (UT's first training), the last boundary closes the last full cycle."""
    if period_ms <= 0:
        raise ValueError(f"cycle period must be > 0 ms, got {period_ms}")
    start = (first_ts // period_ms + warmup_cycles) * period_ms
    return list(range(start, last_ts + 1, period_ms))


def _first_trained(events: pd.DataFrame, universal_actions: list[str] | None) -> pd.Series:
    """Per item, the time of its first universal training event."""
    training = events[events["action"].isin(universal_actions)] if universal_actions else events
    return training.groupby("item_id")["ts"].min()


def trained_share(events: pd.DataFrame, start: int, end: int, trained_before: int,
                  universal_actions: list[str] | None) -> tuple[int, float]:
    """(distinct items exposed in [start, end), share of them with a UT training event before
    `trained_before`)."""
    exposed = pd.unique(events.loc[(events["ts"] >= start) & (events["ts"] < end), "item_id"])
    if len(exposed) == 0:
        return 0, float("nan")
    trained_at = _first_trained(events, universal_actions).reindex(exposed).to_numpy(dtype=float)
    return len(exposed), float(np.mean(trained_at < trained_before))  # NaN (never trained) -> False


def exposure_shares(events: pd.DataFrame, boundaries: list[int], universal_actions: list[str] | None) -> ExposureShares:
    """`events`: item_id, ts, action. Shares per cycle between consecutive boundaries."""
    if len(boundaries) < 2:
        raise ValueError("need at least two boundaries (one full cycle)")
    first_trained = _first_trained(events, universal_actions)
    ts, items = events["ts"].to_numpy(), events["item_id"].to_numpy()
    exposed_n, periodic, once = [], [], []
    for start, end in zip(boundaries[:-1], boundaries[1:], strict=True):
        exposed = pd.unique(items[(ts >= start) & (ts < end)])
        trained_at = first_trained.reindex(exposed).to_numpy(dtype=float)  # NaN: never trained
        exposed_n.append(len(exposed))
        periodic.append(float(np.mean(trained_at < start)) if len(exposed) else float("nan"))
        once.append(float(np.mean(trained_at < boundaries[0])) if len(exposed) else float("nan"))
    return ExposureShares(list(boundaries), exposed_n, periodic, once)


def plot_shares(shares: ExposureShares, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    days = range(1, len(shares.exposed) + 1)
    ax.plot(days, shares.periodic, marker="o", label="periodical warm-up")
    ax.plot(days, shares.once, marker="s", label="warm start once")
    ax.set_xlabel("cycle")
    ax.set_ylabel("share of exposed items trained by UT")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
