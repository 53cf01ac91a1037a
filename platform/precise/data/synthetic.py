"""A synthetic multi-scene behaviour stream with item churn, for scale tests and figure 4a.

Every simulated day brings `new_items_per_day` new items; items are popular by a Zipf law over
their (random) popularity rank, damped by age with a half-life, so fresh items keep getting
exposed, which is what makes periodical warm-up matter. Each user has a favourite scene; an event
happens in it with probability `scene_affinity`, else in a uniformly chosen scene.
Output has the same shape as the MovieLens loader, so replay and ingest treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from precise.data.movielens import EVENT_COLUMNS, ITEM_COLUMNS, EventDataset

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 1_000
    initial_items: int = 500
    new_items_per_day: int = 50
    scenes: int = 4
    days: int = 7
    events_per_second: float = 0.2  # event-time rate of the whole stream
    zipf_skew: float = 1.1
    age_half_life_days: float = 2.0
    scene_affinity: float = 0.8
    like_rate: float = 0.3
    start_ts: int = 1_700_000_000_000  # 2023-11-14, safely in the past
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("users", "initial_items", "scenes", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic {name} must be >= 1, got {getattr(self, name)}")
        if self.new_items_per_day < 0 or self.events_per_second <= 0:
            raise ValueError("new_items_per_day must be >= 0 and events_per_second > 0")
        if not 0 <= self.scene_affinity <= 1 or not 0 <= self.like_rate <= 1:
            raise ValueError("scene_affinity and like_rate must be within [0, 1]")


def generate_synthetic(config: SyntheticConfig) -> EventDataset:
    """Generate the whole stream in event-time order (deterministic for a seed)."""
    rng = np.random.default_rng(config.seed)
    total_items = config.initial_items + config.new_items_per_day * config.days
    item_created_day = np.concatenate(
        [np.full(config.initial_items, -1), np.repeat(np.arange(config.days), config.new_items_per_day)]
    )
    item_scene = rng.integers(0, config.scenes, total_items)
    item_rank = rng.permutation(total_items) + 1  # popularity rank, 1 = most popular
    base_weight = item_rank.astype(float) ** -config.zipf_skew
    user_scene = rng.integers(0, config.scenes, config.users)

    events_per_day = int(round(config.events_per_second * DAY_MS / 1000))
    frames = []
    for day in range(config.days):
        available = np.flatnonzero(item_created_day <= day)
        age = day - np.maximum(item_created_day[available], 0)
        weight = base_weight[available] * 0.5 ** (age / config.age_half_life_days)
        users = rng.integers(0, config.users, events_per_day)
        in_favourite = rng.random(events_per_day) < config.scene_affinity
        scenes = np.where(in_favourite, user_scene[users], rng.integers(0, config.scenes, events_per_day))
        items = np.empty(events_per_day, dtype=np.int64)
        for scene in range(config.scenes):
            picks = scenes == scene
            pool = available[item_scene[available] == scene]
            if not picks.any() or len(pool) == 0:
                items[picks] = rng.choice(available, picks.sum(), p=weight / weight.sum())
                continue
            w = weight[item_scene[available] == scene]
            items[picks] = rng.choice(pool, picks.sum(), p=w / w.sum())
        offsets = np.sort(rng.integers(0, DAY_MS, events_per_day))
        frames.append(pd.DataFrame({"u": users, "i": items, "ts": config.start_ts + day * DAY_MS + offsets}))

    clicks = pd.concat(frames, ignore_index=True)
    clicks["row"] = np.arange(len(clicks))
    clicks["action"] = "click"
    liked = clicks[rng.random(len(clicks)) < config.like_rate].assign(action="like")
    events = pd.concat([clicks, liked]).sort_values(["ts", "row", "action"], kind="stable")
    events = events.reset_index(drop=True)
    scene_names = np.array([f"scene{s}" for s in range(config.scenes)])
    out = pd.DataFrame(
        {
            "event_id": "syn" + str(config.seed) + ":" + events["row"].astype(str) + ":" + events["action"],
            "user_id": "u" + events["u"].astype(str),
            "item_id": "i" + events["i"].astype(str),
            "scene": scene_names[item_scene[events["i"].to_numpy()]],
            "action": events["action"],
            "ts": events["ts"].astype("int64"),
            "value": np.nan,
        }
    )[EVENT_COLUMNS]

    used = np.unique(events["i"].to_numpy())
    created = config.start_ts + np.maximum(item_created_day[used], 0) * DAY_MS
    items = pd.DataFrame(
        {
            "item_id": ["i" + str(i) for i in used],
            "text": [f"Item {i} in scene{item_scene[i]}: synthetic article number {i}" for i in used],
            "scene": scene_names[item_scene[used]],
            "created_ts": created.astype("int64"),
        }
    )
    first_seen = out.groupby("item_id")["ts"].min()
    items["created_ts"] = np.minimum(items["created_ts"], items["item_id"].map(first_seen))
    items = items.sort_values(["created_ts", "item_id"], kind="stable").reset_index(drop=True)
    name = f"synthetic-{config.seed}"
    return EventDataset(name=name, events=out, items=items[ITEM_COLUMNS], num_ratings=len(clicks))
