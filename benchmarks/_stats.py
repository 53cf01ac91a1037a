"""What the benchmarks report for a figure measured in several runs."""

from __future__ import annotations

import statistics


def spread(values: list[float], digits: int | None = None) -> dict[str, float]:
    """min / median / max of `values`, rounded to `digits` when given."""
    figures = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return figures if digits is None else {key: round(value, digits) for key, value in figures.items()}
