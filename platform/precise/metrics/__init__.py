"""Platform metrics through `ray.util.metrics`: the names are in `catalog.CATALOG`, one small module
per stage records them (ingest, train, predict, pipeline, serve).

Ray exports them in Prometheus format from every node's metrics agent (the head's metrics port,
`http://127.0.0.1:<metrics_port>/metrics` on the local stack, names prefixed `ray_`), and the Ray
dashboard's metrics view reads them from there. Each metric object is created once per process
(Ray requires a connected `ray.init()` first) and reused.

Gauges are *held*: Ray's agent forgets a gauge series about two report intervals (~20 s) after its
last `set()`, even while the process that set it lives, so a version gauge set once per cycle
would vanish between cycles. `set_gauge` remembers the value and a daemon thread sets it again
every few seconds; the series lives exactly as long as the process that owns it.
"""

from __future__ import annotations

import threading
from typing import Any

from precise.metrics.catalog import SPECS, MetricSpec

HOLD_INTERVAL_S = 5.0  # well inside Ray's gauge TTL of 2 x metrics_report_interval_ms (10 s)

_METRICS: dict[str, Any] = {}
_HELD: dict[tuple[str, frozenset], tuple[float, dict[str, str]]] = {}
_LOCK = threading.Lock()
_KEEPER: threading.Thread | None = None


def _spec(name: str, kind: str) -> MetricSpec:
    spec = SPECS.get(name)
    if spec is None:
        raise KeyError(f"metric {name} is not in precise.metrics.catalog")
    if spec.kind != kind:
        raise ValueError(f"metric {name} is a {spec.kind}, not a {kind}")
    return spec


def metric(name: str, kind: str) -> Any:
    """The process's Ray metric object for a catalogue name (created on first use)."""
    found = _METRICS.get(name)
    if found is not None:
        _spec(name, kind)
        return found
    from ray.util import metrics as ray_metrics

    spec = _spec(name, kind)
    if kind == "counter":
        made = ray_metrics.Counter(name, spec.description, tag_keys=spec.tags)
    elif kind == "gauge":
        made = ray_metrics.Gauge(name, spec.description, tag_keys=spec.tags)
    else:
        made = ray_metrics.Histogram(name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tags)
    with _LOCK:
        return _METRICS.setdefault(name, made)


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in tags.items()}


def inc(name: str, value: float = 1.0, **tags: Any) -> None:
    if value > 0:
        metric(name, "counter").inc(value, tags=_tags(tags))


def observe(name: str, value: float, **tags: Any) -> None:
    metric(name, "histogram").observe(value, tags=_tags(tags))


def set_gauge(name: str, value: float, **tags: Any) -> None:
    """Set a gauge and hold it at that value for the life of this process (see the module doc)."""
    gauge, tag_values = metric(name, "gauge"), _tags(tags)
    gauge.set(float(value), tags=tag_values)
    with _LOCK:
        _HELD[(name, frozenset(tag_values.items()))] = (float(value), tag_values)
        _start_keeper()


def _start_keeper() -> None:
    global _KEEPER
    if _KEEPER is None or not _KEEPER.is_alive():
        _KEEPER = threading.Thread(target=_keep, name="precise-metrics-keeper", daemon=True)
        _KEEPER.start()


def _keep() -> None:
    stop = threading.Event()
    while not stop.wait(HOLD_INTERVAL_S):
        with _LOCK:
            held = [(key[0], value, tags) for key, (value, tags) in _HELD.items()]
        for name, value, tags in held:
            try:
                _METRICS[name].set(value, tags=tags)
            except Exception:  # noqa: BLE001 - Ray shut down under us: nothing left to export to
                return


def version_number(version: str | None) -> int:
    """`targeted/like/000012` or `000012` -> 12 (0 for none): versions as gauge values."""
    if not version:
        return 0
    tail = str(version).rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def best_effort(record: Any, *args: Any, **kwargs: Any) -> None:
    """Record metrics without letting a metrics failure fail the work they describe."""
    try:
        record(*args, **kwargs)
    except Exception:  # noqa: BLE001 - logged; the job's own result is what matters
        import logging

        logging.getLogger(__name__).exception("recording metrics with %s failed", getattr(record, "__name__", record))
