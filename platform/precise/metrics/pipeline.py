"""Pipeline metrics: cycles finished, their wall time and the figure 4a exposure share."""

from __future__ import annotations

from typing import Any

from precise.metrics import inc, set_gauge


def cycle_finished(mode: str, task: str, seconds: float, exposure: dict[str, Any] | None) -> None:
    """`task`: the target task the pipeline trains (`training.target`)."""
    inc("precise_pipeline_cycles", 1, mode=mode, task=task)
    set_gauge("precise_pipeline_cycle_seconds", seconds, mode=mode, task=task)
    if exposure is not None:
        set_gauge("precise_pipeline_trained_share", exposure["trained_share"], mode=mode, task=task)
