"""The one training recipe: setup, train, evaluate, register (paper sections IV-C..E).

Ray Train runs it on its workers (`precise.train.ray_job`) and `benchmarks/quality.py` runs it
in-process: the same code, split, samples and batches, so what the benchmark measures is what the
platform trains and serves.

    setup()     from the store: the family's sequences cut by `precise.store.sequences.split`, the
                vocabulary (a parent's items keep their indices), the token table of the text
                variants (projected with the parent's fixed projection), the initial weights (the
                parent universal version's, or for targeted training the LATEST universal version's
                warm start), the training samples and the validation cases
    fit()       epochs over the samples (a permutation per (seed, epoch), an even share per worker),
                alternate training (token table frozen for the first epochs), validation every
                `eval_every` epochs (epoch 0 too when the weights came from a parent), the best
                epoch by `training.select_metric`, early stopping after `patience` validations
    evaluate()  full ranking over every item (precise.train.evaluate)
    register()  the best epoch's weights, vocabulary and projection into the model registry, with
                the metric that chose it, the data window, the sequence rules and the lineage
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from torch import nn

from precise.config import PreciseConfig, TextModelConfig, TrainOptions
from precise.model import ModelConfig, build_model
from precise.model.text_adapter import TokenProjection, fit_token_projection, load_token_states, token_table
from precise.store import sequences as store_sequences
from precise.store.lake import read_items
from precise.store.registry import ITEMS_FILE, PROJECTION_FILE, ModelRegistry, ModelVersion, RegistryError
from precise.text.pool import EncodePool, pool_of
from precise.train.data import (
    EvalSet,
    epoch_batches,
    eval_set,
    extend_vocabulary,
    item_counts,
    sample_windows,
)
from precise.train.evaluate import evaluate_model

# Where a run's initial weights come from. universal: `parent` continues the LATEST universal version
# (incremental), `scratch` starts fresh. targeted: `parent` warm-starts from the LATEST universal
# version (periodical warm-up), `continue` continues the LATEST targeted version (warm start once, the
# paper's baseline), `scratch` is targeted training alone.
Start = Literal["parent", "continue", "scratch"]
# (description, number of batches, the epoch's batches) -> the same batches, drawn as a progress bar
ProgressBar = Callable[[str, int, Iterator[dict[str, torch.Tensor]]], Iterable[dict[str, torch.Tensor]]]
REDACTED = "<redacted>"


class TrainingError(RuntimeError):
    """A training run that cannot start: the message says what is missing and what to do."""


# ---- setup ---------------------------------------------------------------------------------------


@dataclass
class Payload:
    """What a training worker needs (everything picklable; put once into Ray's object store)."""

    kind: str  # universal | targeted
    label: str  # the family trained on (metric tag)
    model_config: ModelConfig
    options: TrainOptions
    initial_state: dict[str, torch.Tensor]
    token_table: tuple[np.ndarray, np.ndarray] | None
    samples: np.ndarray  # [S, max_len + 1] item indices
    masks: np.ndarray | None  # [S, max_len + 1] targeted label positions (None: every position)
    repeat: int  # targeted: cuts of every window per epoch
    valid: EvalSet
    from_parent: tuple[str, ...]  # parameter names whose initial value came from a parent model
    select_metric: str
    eval_ks: tuple[int, ...]
    eval_batch_users: int


Cases = tuple[list[str], list[list[str]], list[str]]  # (users, histories, labels)


@dataclass(frozen=True)
class TaskData:
    """What one model learns from the split: its training items per user, which of their positions
    are labels (targeted training on the all-scene history), and its validation and test cases."""

    family: str  # the sequence family the model reads for a user (its sequence rules)
    users: list[str]
    items: list[list[str]]  # training items per user, oldest first
    newest_ts: list[int]  # per user, the newest event time (incremental training)
    label_masks: list[list[bool]] | None
    valid: Cases
    test: Cases


def _cases(split: store_sequences.Split, which: str) -> Cases:
    rows, histories, labels = split.cases(which)
    return [split.users[r] for r in rows], histories, labels


def task_data(splits: dict[str, store_sequences.Split], kind: str, history: str = "target") -> TaskData:
    """Universal: the all-scene family. Targeted: the target family's own events (`history:
    target`), or the all-scene history of the users with target events, the target events being
    the labels (`history: all`); either way the labels are the target family's held-out events."""
    reference = splits["reference"]
    if kind == "universal" or history == "target":
        split = splits["family"] if kind == "targeted" else reference
        return TaskData(split.family, list(split.users), split.training_items(),
                        [ts[-1] if ts else 0 for ts in split.ts], None, _cases(split, "valid"), _cases(split, "test"))
    target = splits["family"]
    rows_of = reference.row_of()
    users, items, newest, masks = [], [], [], []
    for row, user in enumerate(target.users):
        ref = rows_of.get(user)
        if ref is None:
            continue
        n = int(target.train_len[row])
        labels = set(zip(target.ts[row][:n], target.items[row][:n], strict=True))
        m = int(reference.train_len[ref])
        users.append(user)
        items.append(reference.items[ref][:m])
        newest.append(max(target.ts[row][-1] if target.ts[row] else 0, reference.ts[ref][-1]))
        masks.append([key in labels for key in zip(reference.ts[ref][:m], reference.items[ref][:m], strict=True)])

    def cases(which: str) -> Cases:
        case_users, _, case_labels = _cases(target, which)
        cut = reference.train_len if which == "valid" else reference.test_len
        kept = [(u, label) for u, label in zip(case_users, case_labels, strict=True) if u in rows_of]
        return ([u for u, _ in kept], [reference.items[rows_of[u]][: cut[rows_of[u]]] for u, _ in kept],
                [label for _, label in kept])

    return TaskData(reference.family, users, items, newest, masks, cases("valid"), cases("test"))


@dataclass
class Setup:
    payload: Payload
    task: str | None  # the targeted task name (None for universal)
    items: list[str]  # index i <-> items[i - 1]
    projection: TokenProjection | None
    splits: dict[str, store_sequences.Split]  # "reference" (all-scene) and, for targeted, "family"
    data: TaskData
    lookup: dict[str, int]
    data_window: dict[str, Any]
    sequence_rules: dict[str, Any]
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.payload.kind

    def test(self) -> EvalSet:
        """The test cases of the trained task (reported by the benchmark, never used to select)."""
        return eval_set(*self.data.test, self.lookup, self.payload.model_config.max_len)

    def item_counts(self) -> np.ndarray:
        """Training interactions per item index in the all-scene training items (popularity, cold)."""
        return item_counts(self.splits["reference"].training_items(), self.lookup, len(self.items))


def _grow(fresh: dict[str, torch.Tensor], parent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Start from `fresh` (built for the new vocabulary) and copy every parent tensor into it.

    Per-item tables ([n + 1, ...]) copy the parent's rows; rows of new items keep their fresh
    initialisation (for the token table: the new items' projected LLM states). Any other shape
    change is an error: it would mean the architecture changed, which needs a full retrain."""
    state = {k: v.clone() for k, v in fresh.items()}
    for name, value in parent.items():
        if name not in state:
            continue
        target = state[name]
        if value.shape == target.shape:
            state[name] = value.clone()
        elif value.dim() == target.dim() and value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]:
            state[name][: value.shape[0]] = value
        else:
            raise TrainingError(f"cannot continue from the parent version: {name} is {tuple(value.shape)} there and "
                                f"{tuple(target.shape)} here (model config changed?); train from scratch (--full)")
    return state


def _catalogue(root: str) -> tuple[list[str], dict[str, str]]:
    """Item ids of the lake's item table, oldest first (a stable order for new indices), and texts."""
    table = read_items(root)
    if table.num_rows == 0:
        return [], {}
    table = table.sort_by([("created_ts", "ascending"), ("item_id", "ascending")])
    ids, texts = table.column("item_id").to_pylist(), table.column("text").to_pylist()
    return ids, {i: t for i, t in zip(ids, texts, strict=True) if t}


def _parent_assets(registry: ModelRegistry, parent: ModelVersion) -> tuple[list[str], TokenProjection | None]:
    items = json.loads(registry.read_file(parent, ITEMS_FILE))
    try:
        return items, TokenProjection.from_arrays(load_arrays(registry.read_file(parent, PROJECTION_FILE)))
    except RegistryError:
        return items, None


def _read_family(root: str, name: str, until_ts: int | None) -> pa.Table:
    stored = store_sequences.read_sequences(root, name)
    if stored.num_rows == 0:
        raise TrainingError(f"no sequences named {name!r} under {root}/sequences; run jobs/ingest.py first")
    table = store_sequences.cut_before(stored, until_ts)
    if table.num_rows == 0:
        raise TrainingError(f"none of the {stored.num_rows} sequences named {name!r} has events before {until_ts}")
    return table


def setup(config: PreciseConfig, kind: str, *, start: Start = "parent", until_ts: int | None = None,
          registry: ModelRegistry | None = None) -> Setup:
    """Everything a training run needs, from the lake's sequences and the registry."""
    if kind not in ("universal", "targeted"):
        raise TrainingError(f"kind must be universal or targeted, got {kind!r}")
    t = config.training
    root = config.storage.resolved_root()
    registry = registry or ModelRegistry(root)
    reference_name = config.sequences.all_scene.name
    family_name = reference_name if kind == "universal" else t.target
    reference = _read_family(root, reference_name, until_ts)
    splits = {"reference": store_sequences.split(reference, name=reference_name)}
    if kind == "targeted":
        splits["family"] = store_sequences.split(reference, _read_family(root, family_name, until_ts), family_name)
    options = t.universal if kind == "universal" else t.targeted
    data = task_data(splits, kind, getattr(options, "history", "target"))

    parent, lineage = _parent(registry, kind, start, t.target)
    parent_items, projection = _parent_assets(registry, parent) if parent else ([], None)
    catalogue, texts = _catalogue(root)
    items = extend_vocabulary(parent_items, catalogue, *(it for s in splits.values() for it in s.items))
    lookup = {item: i + 1 for i, item in enumerate(items)}
    model_config = ModelConfig(**t.model.model_dump(), num_items=len(items))

    table = None
    if model_config.uses_text:
        known = {i: texts[i] for i in items if i in texts}
        if not known:
            raise TrainingError("no item texts in the lake (item-catalog not ingested?); the text variants need them")
        tokens = load_token_states(known, t.text.model, t.text.max_tokens, progress=False, pool=_encode_pool(t.text))
        projection = projection or fit_token_projection(tokens, model_config.token_dim)
        table = token_table(tokens, items, model_config.token_dim, projection)

    torch.manual_seed(options.seed)
    state = build_model(model_config, kind, token_table=table).state_dict()
    from_parent: list[str] = []
    if parent is not None:
        grown = _grow(build_model(model_config, parent.kind, token_table=table).state_dict(),
                      registry.load_state_dict(parent))
        if kind == parent.kind:
            state, from_parent = grown, list(grown)
        else:
            model = build_model(model_config, kind, token_table=table)
            model.load_state_dict(state)
            from_parent = model.warm_start(grown)
            state = model.state_dict()
            lineage["warm_started_parameters"] = len(from_parent)

    # Incremental: a continued model trains on the users with events since its parent's window.
    since = parent.metadata.get("data_window", {}).get("end_ts") if parent is not None and kind == parent.kind else None
    fresh = [since is None or ts > since for ts in data.newest_ts]
    samples, masks = sample_windows([seq for seq, ok in zip(data.items, fresh, strict=True) if ok], lookup,
                                    model_config.max_len, options.windows,
                                    None if data.label_masks is None else
                                    [m for m, ok in zip(data.label_masks, fresh, strict=True) if ok],
                                    options.window_stride)
    valid = eval_set(*data.valid, lookup, model_config.max_len)
    spec = next(s for s in config.sequences.specs() if s.name == data.family)
    return Setup(
        payload=Payload(kind=kind, label=family_name, model_config=model_config, options=options,
                        initial_state=state, token_table=table, samples=samples, masks=masks,
                        repeat=getattr(options, "targets_per_user", 1), valid=valid,
                        from_parent=tuple(from_parent), select_metric=t.select_metric, eval_ks=tuple(t.eval_ks),
                        eval_batch_users=t.eval_batch_users),
        task=None if kind == "universal" else t.target, items=items, projection=projection, splits=splits,
        data=data, lookup=lookup,
        data_window={"since_ts": since, "end_ts": store_sequences.last_event_ts(reference), "until_ts": until_ts,
                     "users": len(data.users), "samples": len(samples), "valid_users": len(valid)},
        # what the model reads for a user, at serving time too (the family its inputs come from)
        sequence_rules={"family": data.family, "actions": spec.actions, "scenes": spec.scenes,
                        "max_len": model_config.max_len},
        lineage=lineage,
    )


def _encode_pool(text: TextModelConfig) -> EncodePool | None:
    """Uncached item text is encoded by a Ray Data actor pool when Ray is up, not by this driver."""
    import ray

    return pool_of(text) if ray.is_initialized() else None


def _parent(registry: ModelRegistry, kind: str, start: Start, task: str) -> tuple[ModelVersion | None, dict[str, Any]]:
    if start not in ("parent", "continue", "scratch"):
        raise TrainingError(f"start must be parent, continue or scratch, got {start!r}")
    if start == "scratch":
        return None, {"parent_version": None}
    if kind == "universal":
        parent = registry.latest("universal")
        return parent, {"parent_version": parent.ref if parent else None}
    if start == "continue" and (previous := registry.latest("targeted", task)) is not None:
        return previous, {"parent_version": previous.ref,
                          "warm_started_from": previous.metadata.get("warm_started_from")}
    parent = registry.latest("universal")
    if parent is None:
        raise TrainingError("targeted training warm-starts from the LATEST universal model; run jobs/universal.py "
                            "first (or start targeted training from scratch)")
    return parent, {"warm_started_from": parent.ref}


# ---- train ---------------------------------------------------------------------------------------


def amp_dtype(name: str | None) -> torch.dtype | None:
    return torch.bfloat16 if name == "bf16" else None


def make_optimizer(model: nn.Module, options: TrainOptions, from_parent: tuple[str, ...]) -> torch.optim.Optimizer:
    """AdamW (betas as in the HSTU repository) with one learning rate per parameter group:
    `item_lr` for the item tower, `warm_start_lr` for what came from a parent, `lr` for the rest.
    A frozen token table has no gradient, so a step leaves it (and its moments) untouched."""
    inherited = set(from_parent)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        lr = options.warm_start_lr if name in inherited and options.warm_start_lr is not None else options.lr
        if name.startswith("items.") and options.item_lr is not None:
            lr = options.item_lr
        groups.setdefault(lr, []).append(param)
    return torch.optim.AdamW([{"params": params, "lr": lr} for lr, params in groups.items()],
                             lr=options.lr, betas=tuple(options.betas), weight_decay=options.weight_decay)


def train_step(trainable: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, *,
               autocast: torch.dtype | None = None, grad_clip: float | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss *tensor* (callers synchronise once per
    epoch: `.item()` every step would make a GPU wait for each step)."""
    trainable.train()
    optimizer.zero_grad(set_to_none=True)
    device_type = next(trainable.parameters()).device.type
    with torch.autocast(device_type=device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = trainable.loss(batch)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(trainable.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


class Trainable(nn.Module):
    """`.loss(batch)` of a model, routed through a wrapper's forward (DDP synchronises the gradients
    of what runs through its forward); the identity wrapper in-process."""

    def __init__(self, model: nn.Module, wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        super().__init__()
        self.wrapped = wrap(_LossForward(model)) if wrap else _LossForward(model)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.wrapped(batch)


class _LossForward(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)


@dataclass
class Progress:
    """Where a run stands after an epoch: what a checkpoint holds besides the weights."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (and epoch 0)
    best_epoch: int = -1
    best_metric: float = -math.inf
    resumed_from_epoch: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Resume:
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    best_state: dict[str, torch.Tensor] | None
    progress: Progress


def validation_metrics(model: nn.Module, payload: Payload, device: torch.device | str) -> dict[str, float]:
    result = evaluate_model(model, payload.valid, None, payload.eval_ks, payload.eval_batch_users, device)
    return {key: value for key, value in result.metrics.items()}


def metric_key(name: str) -> str:
    """`N@10` -> `val_ndcg_at_10` (the names metrics and reports use)."""
    kind, k = name.split("@")
    return f"val_{'ndcg' if kind == 'N' else 'recall'}_at_{k}"


class WeightAverage:
    """An exponential moving average of a model's weights (`training.*.ema_decay`): a copy of the
    model whose floating-point parameters and buffers follow the trained ones after every step.
    With few validation users the metric of one epoch's weights jumps from epoch to epoch; the
    average moves smoothly, so validation selects a weight set that holds on other users too."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        pairs = [(mine, theirs) for mine, theirs in zip(self.model.state_dict().values(),
                                                        model.state_dict().values(), strict=True)
                 if theirs.is_floating_point()]
        # built once: update() runs after every optimizer step
        self._mine, self._theirs = [m for m, _ in pairs], [t for _, t in pairs]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._mine, self._theirs, 1.0 - self.decay)


def evaluated_model(model: nn.Module) -> nn.Module:
    """The weights `fit` validates and selects for a model it is training: their running average
    when `ema_decay` is set, else the model itself."""
    average = getattr(model, "_precise_average", None)
    return average.model if average is not None else model


def fit(payload: Payload, *, rank: int = 0, world: int = 1, device: torch.device | str = "cpu",
        wrap: Callable[[nn.Module], nn.Module] | None = None, agree: Callable[[bool], bool] | None = None,
        resume: Resume | None = None,
        on_epoch: Callable[[nn.Module, torch.optim.Optimizer, Progress, dict[str, torch.Tensor] | None], None]
        | None = None, log: Callable[[str], None] | None = None,
        progress_bar: ProgressBar | None = None) -> tuple[dict[str, torch.Tensor], Progress]:
    """Train `payload` for its epochs; returns (the best epoch's weights, on CPU; the progress).

    `rank`/`world`: this worker's share of every epoch; `wrap`: the distributed wrapper (DDP);
    `agree`: every worker agrees on rank 0's early-stop decision; `resume`: a checkpoint to continue
    from; `on_epoch`: called after every epoch (the Ray job checkpoints and reports there); `log`:
    gets one line per epoch (on rank 0); `progress_bar`: wraps each epoch's batches (a bar over them,
    for a person watching a terminal)."""
    options = payload.options
    model = build_model(payload.model_config, payload.kind, token_table=payload.token_table)
    model.load_state_dict(payload.initial_state if resume is None else resume.model_state)
    model.to(device)
    optimizer = make_optimizer(model, options, payload.from_parent)
    progress = Progress() if resume is None else resume.progress
    best_state = None if resume is None else resume.best_state
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer_state)
        progress.resumed_from_epoch = progress.epoch
    samples = torch.from_numpy(np.array(payload.samples, dtype=np.int64))
    masks = None if payload.masks is None else torch.from_numpy(np.array(payload.masks, dtype=bool))
    select = metric_key(payload.select_metric)
    cast = amp_dtype(options.amp)
    tokens_trainable = getattr(model.items, "set_tokens_trainable", None)
    average = WeightAverage(model, options.ema_decay) if options.ema_decay is not None and rank == 0 else None
    # a plain attribute, not a submodule: the average is neither trained, nor wrapped by DDP, nor
    # in the model's state
    model._precise_average = average
    scored = evaluated_model(model)

    def consider(epoch: int, record: dict[str, Any]) -> bool:
        nonlocal best_state
        if select not in record or record[select] <= progress.best_metric:
            return False  # no validation case (then the last epoch is registered), or not better
        progress.best_metric, progress.best_epoch = record[select], epoch
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
        return True

    if rank == 0 and resume is None and payload.from_parent:
        # The starting point is a trained model: validate it, so fine-tuning that only hurts
        # registers the weights it started from.
        record = {"epoch": 0, **_val_record(scored, payload, device)}
        consider(0, record)
        progress.history.append(record)
        _log(log, payload, record, options.epochs, None)
    since_best, started = 0, time.perf_counter()
    wrapped, trainable_now = None, None
    for epoch in range(progress.epoch + 1, options.epochs + 1):
        # Reseeded per epoch: dropout and negatives of epoch e are the same after a resume.
        torch.manual_seed(options.seed * 1_000_003 + epoch * 97 + rank)
        # Alternate training (paper IV-E) freezes the tokens while the ID side learns: a variant with
        # no ID side has nothing to learn first, so its tokens train from the start.
        freeze = options.freeze_tokens_epochs if payload.model_config.uses_id else 0
        tokens_on = epoch > freeze and options.item_lr != 0
        if tokens_trainable is not None:
            tokens_trainable(tokens_on)
        if wrapped is None or tokens_on != trainable_now:
            # DDP registers the parameters that require gradients when it wraps: re-wrap when the
            # trainable set changes (alternate training).
            wrapped, trainable_now = Trainable(model, wrap), tokens_on
        epoch_start, total, steps = time.perf_counter(), torch.zeros((), device=device), 0
        batches = epoch_batches(samples, payload.kind, options.batch_size, options.seed, epoch, rank, world, masks,
                                payload.repeat)
        if progress_bar is not None:
            share = len(samples) * payload.repeat // world
            batches = progress_bar(f"[{payload.kind}/{payload.label}] epoch {epoch}/{options.epochs}",
                                   -(-share // options.batch_size), batches)
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            total += train_step(wrapped, batch, optimizer, autocast=cast, grad_clip=options.grad_clip)
            if average is not None:
                average.update()
            steps += 1
        seconds = time.perf_counter() - epoch_start
        trained = len(samples) * payload.repeat // world * world  # by all workers together
        record: dict[str, Any] = {"epoch": epoch, "loss": float(total) / max(steps, 1), "seconds": round(seconds, 3),
                                  "samples": trained, "samples_per_s": trained / seconds if seconds > 0 else 0.0}
        stop = False
        if rank == 0 and len(payload.valid) and (epoch % options.eval_every == 0 or epoch == options.epochs):
            record.update(_val_record(scored, payload, device))
            since_best = 0 if consider(epoch, record) else since_best + 1
            stop = options.patience is not None and since_best >= options.patience
        progress.epoch = epoch
        progress.history.append(record)
        if rank == 0:
            _log(log, payload, record, options.epochs, (time.perf_counter() - started) / max(len(
                [r for r in progress.history if r["epoch"] > progress.resumed_from_epoch]), 1))
        if on_epoch is not None:
            on_epoch(model, optimizer, progress, best_state)
        if agree(stop) if agree is not None else stop:
            if rank == 0 and log is not None:
                log(f"[{payload.kind}/{payload.label}] early stop: no better {payload.select_metric} in "
                    f"{since_best} validations")
            break
    if best_state is None:  # no validation case at all: the last weights (or their average)
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
    return best_state, progress


def _val_record(model: nn.Module, payload: Payload, device: torch.device | str) -> dict[str, float]:
    if len(payload.valid) == 0:
        return {}
    return {metric_key(name): value for name, value in validation_metrics(model, payload, device).items()}


def _log(log: Callable[[str], None] | None, payload: Payload, record: dict[str, Any], epochs: int,
         epoch_s: float | None) -> None:
    if log is None:
        return
    line = f"[{payload.kind}/{payload.label}] epoch {record['epoch']}/{epochs}"
    if "loss" in record:
        line += f" loss {record['loss']:.4f} ({record['samples_per_s']:.0f} samples/s)"
    vals = " ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in record.items() if k.startswith("val_"))
    if vals:
        line += f" val {vals}"
    if epoch_s is not None and record["epoch"] < epochs:
        line += f" eta {epoch_s * (epochs - record['epoch']):.0f}s"
    log(line)


# ---- evaluate and register -----------------------------------------------------------------------


def trained_model(setup: Setup, state: dict[str, torch.Tensor]) -> nn.Module:
    p = setup.payload
    model = build_model(p.model_config, p.kind, token_table=p.token_table)
    model.load_state_dict(state)
    return model.eval()


def redacted(config: PreciseConfig) -> dict[str, Any]:
    """The config as a model version records it, without credentials (Kafka SASL/TLS settings)."""
    values = config.model_dump(mode="json")
    for section, key in (("kafka", "client_options"), ("ingest", "consumer_config")):
        values[section][key] = {name: REDACTED for name in values[section][key]}
    return values


def selected_metrics(progress: Progress) -> dict[str, Any]:
    """The metrics a registered version reports: its chosen epoch's validation and the last epoch's loss."""
    best = next((r for r in progress.history if r["epoch"] == progress.best_epoch), {})
    last = progress.history[-1] if progress.history else {}
    return {**{k: v for k, v in best.items() if k.startswith("val_")},
            "epoch": progress.epoch, "best_epoch": progress.best_epoch,
            "loss": last.get("loss", math.nan), "samples_per_s": last.get("samples_per_s", 0.0),
            "resumed_from_epoch": progress.resumed_from_epoch}


def register(setup: Setup, state: dict[str, torch.Tensor], progress: Progress, config: PreciseConfig,
             registry: ModelRegistry, extra: dict[str, Any] | None = None) -> ModelVersion:
    """Publish the chosen weights with everything needed to use them and to know where they came from."""
    p = setup.payload
    files = {ITEMS_FILE: json.dumps(setup.items).encode()}
    if setup.projection is not None:
        files[PROJECTION_FILE] = save_arrays(setup.projection.as_arrays())
    metadata = {
        "config": redacted(config),
        "model_config": asdict(p.model_config),
        "train_config": p.options.model_dump(mode="json"),
        "data_window": setup.data_window,
        "ledger": (store_sequences.read_state(config.storage.resolved_root(), p.label) or {}).get("offsets", {}),
        "sequence_rules": setup.sequence_rules,
        "metrics": selected_metrics(progress),
        "selected_by": {"metric": p.select_metric, "epoch": progress.best_epoch, "value": progress.best_metric,
                        "on": "validation"},
        "history": progress.history,
        "num_items": len(setup.items),
        "text": config.training.text.model_dump() if p.model_config.uses_text else None,
        **setup.lineage,
        **(extra or {}),
    }
    return registry.register(p.kind, state, metadata, task=setup.task, files=files)


def fit_in_process(setup: Setup, device: torch.device | str = "cpu",
                   log: Callable[[str], None] | None = print) -> tuple[dict[str, torch.Tensor], Progress]:
    """The recipe without Ray: one worker in this process (the benchmark's way to run it)."""
    return fit(setup.payload, device=device, log=log)


def batches_of(setup: Setup, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """The batches epoch `epoch` trains on in-process (for tools and tests)."""
    p = setup.payload
    masks = None if p.masks is None else torch.from_numpy(p.masks)
    return epoch_batches(torch.from_numpy(p.samples), p.kind, p.options.batch_size, p.options.seed, epoch,
                         masks=masks, repeat=p.repeat)
