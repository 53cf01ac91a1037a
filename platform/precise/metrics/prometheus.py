"""Read the platform's metrics back from a Ray node's Prometheus endpoint (`precise stack status
--metrics`, the tests). Ray adds its own per-process tags to every series (`WorkerId`,
`NodeAddress`, `SessionName`, ...); these helpers sum them away, keeping the metric's own tags."""

from __future__ import annotations

import urllib.request
from typing import Any

from precise.metrics.catalog import CATALOG

Sample = tuple[str, dict[str, str], float]


def scrape(url: str, timeout: float = 5.0) -> list[Sample]:
    """Every sample on the endpoint as (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


GAUGES = frozenset(spec.prometheus_name for spec in CATALOG if spec.kind == "gauge")


def _combine(name: str, values: list[float]) -> float:
    # Several processes may hold the same gauge (a Train worker and its driver both set the loss):
    # the largest is the one to show (versions only grow). Counts from several processes add up.
    return max(values) if name in GAUGES else sum(values)


def value(samples: list[Sample], name: str, **labels: Any) -> float | None:
    """The value of `name` over every series whose labels include `labels`: the sum of a counter
    (or histogram part), the largest of a gauge; None when there is no such series."""
    want = {key: str(value) for key, value in labels.items()}
    values = [v for n, lab, v in samples if n == name and want.items() <= lab.items()]
    return _combine(name, values) if values else None


def platform_series(samples: list[Sample]) -> dict[str, float]:
    """The catalogue's counters and gauges (histograms as their `_count`), one entry per series of
    the metric's own tags, Ray's combined away as in `value`:
    `{'ray_precise_model_version{model=universal,task=all}': 2.0, ...}`."""
    wanted = {}
    for spec in CATALOG:
        name = spec.prometheus_name + ("_count" if spec.kind == "histogram" else "")
        wanted[name] = spec.tags
    grouped: dict[tuple[str, str], list[float]] = {}
    for name, labels, sample in samples:
        tags = wanted.get(name)
        if tags is not None:
            key = "{" + ",".join(f"{tag}={labels.get(tag, '')}" for tag in tags) + "}"
            grouped.setdefault((name, key), []).append(sample)
    return {name + key: _combine(name, values) for (name, key), values in sorted(grouped.items())}
