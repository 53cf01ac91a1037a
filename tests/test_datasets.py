"""Packaged datasets load with the published counts; the synthetic stream has the asked-for shape."""

import pytest

from precise.data import SyntheticConfig, generate_synthetic, load_movielens
from precise.data.movielens import genre_scene


@pytest.mark.parametrize(
    ("name", "users", "items", "ratings", "likes"),
    [("ml-100k", 943, 1682, 100_000, 55_375), ("ml-1m", 6040, 3706, 1_000_209, 575_281)],
)
def test_movielens_counts(name, users, items, ratings, likes):
    data = load_movielens(name)
    events = data.events
    assert data.num_ratings == ratings
    assert events["user_id"].nunique() == users
    assert events["item_id"].nunique() == items == len(data.items)
    assert (events["action"] == "rate").sum() == ratings
    assert (events["action"] == "like").sum() == likes
    assert (events.loc[events["action"] == "like", "value"] >= 4).all()
    assert events["event_id"].is_unique
    assert events["ts"].is_monotonic_increasing
    # every item's creation time is its first event, so replay can send it just before
    first = events.groupby("item_id")["ts"].min()
    assert (data.items.set_index("item_id")["created_ts"] == first.reindex(data.items["item_id"]).values).all()


def test_item_text_and_scene():
    items = load_movielens("ml-100k").items.set_index("item_id")
    assert items.loc["1", "text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert items.loc["1", "scene"] == "family"
    assert genre_scene("Thriller Drama") == "thriller"
    assert genre_scene("") == "other"


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset 'ml-20m'"):
        load_movielens("ml-20m")


def test_synthetic_stream_has_churn_and_is_deterministic():
    config = SyntheticConfig(users=200, initial_items=100, new_items_per_day=20, days=5,
                             events_per_second=0.05, seed=3)
    a, b = generate_synthetic(config), generate_synthetic(config)
    assert a.events.equals(b.events)
    assert a.events["ts"].is_monotonic_increasing and a.events["event_id"].is_unique
    per_day = a.events.assign(day=(a.events["ts"] - config.start_ts) // 86_400_000)
    assert per_day["day"].nunique() == 5
    new_items = a.items[a.items["created_ts"] > config.start_ts + 86_400_000]
    assert len(new_items) > 0, "items created after day 1 must be exposed"
    assert set(a.events["item_id"]) == set(a.items["item_id"])
    with pytest.raises(ValueError, match="users must be >= 1"):
        SyntheticConfig(users=0)
