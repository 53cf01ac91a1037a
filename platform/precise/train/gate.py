"""The serving gate: which model a cycle publishes for the target task.

The paper serves the targeted model; whether targeted training beat the universal model used
directly is an empirical question each cycle answers again. Both new models are scored on the same
target-task validation cases (the users whose held-out validation event is a target event, with
the same labels), each with its own input: the targeted model its own sequence family, the
universal model the all-scene history before the validation cut. The better one by
`training.select_metric` is published, unless `pipeline.publish` forces one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from precise.config import PreciseConfig
from precise.store import sequences as store_sequences
from precise.store.registry import ModelRegistry, ModelVersion, load_model
from precise.train.data import eval_set
from precise.train.evaluate import evaluate_model


@dataclass(frozen=True)
class GateDecision:
    published: ModelVersion
    choice: str  # universal | targeted
    reason: str
    scores: dict[str, float]  # model kind -> validation metric on the target task
    metric: str
    cases: int

    def report(self) -> dict[str, Any]:
        return {"published": self.published.ref, "choice": self.choice, "reason": self.reason,
                "metric": self.metric, "scores": self.scores, "cases": self.cases}


def target_task_scores(config: PreciseConfig, universal: ModelVersion, targeted: ModelVersion,
                       until_ts: int | None = None) -> tuple[dict[str, float], int]:
    """(validation `select_metric` of each model on the same target-task cases, number of cases)."""
    root = config.storage.resolved_root()
    t = config.training
    reference_name = config.sequences.all_scene.name
    reference = store_sequences.cut_before(store_sequences.read_sequences(root, reference_name), until_ts)
    family = store_sequences.cut_before(store_sequences.read_sequences(root, t.target), until_ts)
    by_family = {reference_name: store_sequences.split(reference, name=reference_name),
                 t.target: store_sequences.split(reference, family, t.target)}
    target = by_family[t.target]
    rows, _, labels = target.cases("valid")
    users = [target.users[r] for r in rows]
    registry = ModelRegistry(root)
    scores: dict[str, float] = {}
    cases = len(users)
    for model_version in (universal, targeted):
        loaded = load_model(registry, model_version)
        rules = model_version.metadata["sequence_rules"]
        source = by_family[rules["family"]]
        rows_of = source.row_of()
        lookup = loaded.lookup
        # the same users and labels for both; each model reads its own family before the cut
        keep = [(u, source.items[rows_of[u]][: source.train_len[rows_of[u]]], label)
                for u, label in zip(users, labels, strict=True) if u in rows_of and label in lookup]
        keep = [(u, [i for i in history if i in lookup], label) for u, history, label in keep]
        keep = [case for case in keep if case[1]]
        cases = min(cases, len(keep))
        data = eval_set([c[0] for c in keep], [c[1] for c in keep], [c[2] for c in keep], lookup,
                        loaded.model.config.max_len)
        k = int(t.select_metric.split("@")[1])
        result = evaluate_model(loaded.model, data, None, (k,), t.eval_batch_users)
        scores[model_version.kind] = result.metrics[t.select_metric] if len(data) else 0.0
    return scores, cases


def decide(config: PreciseConfig, universal: ModelVersion, targeted: ModelVersion,
           until_ts: int | None = None) -> GateDecision:
    """Publish the better of the two new models on the target task (or the one the config forces)."""
    forced = config.pipeline.publish
    scores, cases = target_task_scores(config, universal, targeted, until_ts)
    metric = config.training.select_metric
    if forced != "auto":
        choice, reason = forced, f"pipeline.publish is {forced}"
    elif scores["targeted"] >= scores["universal"]:
        choice = "targeted"
        reason = (f"the targeted model scores {scores['targeted']:.4f} {metric} on the target task's validation, "
                  f"the universal model used directly {scores['universal']:.4f}")
    else:
        choice = "universal"
        reason = (f"the targeted model scores {scores['targeted']:.4f} {metric} on the target task's validation, "
                  f"below the universal model used directly ({scores['universal']:.4f}): the universal model "
                  f"is published")
    return GateDecision(universal if choice == "universal" else targeted, choice, reason, scores, metric, cases)
