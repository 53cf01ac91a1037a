"""Platform metrics through `ray.util.metrics`: one small module per stage (ingest, train, serve ...).

Ray exports them in Prometheus format from every node's metrics agent (the head's metrics port,
`http://127.0.0.1:<metrics_port>/metrics` on the local stack, names prefixed `ray_`), and the Ray
dashboard's metrics view reads them from there. Each metric object is created once per process
(Ray requires a connected `ray.init()` first) and reused: `counter`, `gauge` and `histogram`
return the cached instance for a name. Names follow `precise_<stage>_<what>[_<unit>]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_METRICS: dict[str, Any] = {}


def _cached(kind: str, name: str, factory: Any) -> Any:
    metric = _METRICS.get(name)
    if metric is None:
        metric = _METRICS[name] = factory()
    elif type(metric).__name__ != kind:
        raise ValueError(f"metric {name} already exists as a {type(metric).__name__}, not a {kind}")
    return metric


def counter(name: str, description: str, tag_keys: Sequence[str] = ()) -> Any:
    from ray.util.metrics import Counter

    return _cached("Counter", name, lambda: Counter(name, description, tag_keys=tuple(tag_keys)))


def gauge(name: str, description: str, tag_keys: Sequence[str] = ()) -> Any:
    from ray.util.metrics import Gauge

    return _cached("Gauge", name, lambda: Gauge(name, description, tag_keys=tuple(tag_keys)))


def histogram(name: str, description: str, boundaries: Sequence[float], tag_keys: Sequence[str] = ()) -> Any:
    from ray.util.metrics import Histogram

    return _cached("Histogram", name,
                   lambda: Histogram(name, description, boundaries=list(boundaries), tag_keys=tuple(tag_keys)))
