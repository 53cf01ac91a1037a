"""Pipeline metrics: cycles finished, their wall time, the figure 4a exposure share, the serving gate."""

from __future__ import annotations

from typing import Any

from precise.metrics import inc, set_gauge


def cycle_finished(mode: str, task: str, seconds: float, exposure: dict[str, Any] | None) -> None:
    """`task`: the target task the pipeline trains (`training.target`)."""
    inc("precise_pipeline_cycles", 1, mode=mode, task=task)
    set_gauge("precise_pipeline_cycle_seconds", seconds, mode=mode, task=task)
    if exposure is not None:
        set_gauge("precise_pipeline_trained_share", exposure["trained_share"], mode=mode, task=task)


def gate_decided(task: str, choice: str, scores: dict[str, float]) -> None:
    """The serving gate of a cycle: both models' target-task scores, 1 for the published one."""
    for model, score in scores.items():
        set_gauge("precise_pipeline_gate_score", score, task=task, model=model)
        set_gauge("precise_pipeline_published_model", 1.0 if model == choice else 0.0, task=task, model=model)
