"""Real datasets shipped in packages (MovieLens) and a synthetic multi-scene stream generator."""

from precise.data.movielens import DATASETS, EventDataset, load_movielens
from precise.data.synthetic import SyntheticConfig, generate_synthetic

__all__ = ["DATASETS", "EventDataset", "SyntheticConfig", "generate_synthetic", "load_movielens"]
