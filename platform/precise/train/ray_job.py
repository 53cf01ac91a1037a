"""Universal and targeted training as Ray Train jobs (DESIGN section 2, paper sections IV-C..E).

The driver prepares everything a worker needs and puts it in the object store:

* the item vocabulary: the parent version's items keep their indices, new items are appended,
  so every trained row keeps its meaning across versions (incremental training);
* the token table of the text variants, projected with the parent's fixed `TokenProjection`;
* the initial weights: the parent universal version's (grown to the new vocabulary), or for
  targeted training the LATEST universal version's (warm start, every shared parameter);
* the validation set (leave-one-out: the second-to-last item of each sequence).

Training data reaches the workers through Ray Data: the sequences the ingest job built are read,
restricted to the users with events since the parent version (incremental) and turned into
right-aligned index windows by `map_batches`; `get_dataset_shard` splits them across workers.
Each worker runs the same `train_step` as the plain loop (`precise.train.loop`), wrapped in DDP
when there are several workers. Every epoch rank 0 evaluates, writes a checkpoint (safetensors
weights, optimizer state, progress) and reports; a worker that dies makes Ray Train restart the
group (up to `training.max_failures` times), and the loop resumes from the last checkpoint Ray Train
registered (one reported moments before the death may not be yet: that epoch is redone). The
result is registered in the model registry with its lineage.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from safetensors.torch import load_file, save_file
from torch import nn

from precise.config import PreciseConfig
from precise.metrics import best_effort
from precise.metrics.train import epoch_finished, model_registered
from precise.model import ModelConfig, build_model
from precise.model.config import PAD
from precise.model.inputs import right_aligned
from precise.model.text_adapter import TokenProjection, fit_token_projection, load_token_states, token_table
from precise.store.registry import ITEMS_FILE, PROJECTION_FILE, ModelRegistry, ModelVersion, RegistryError
from precise.train.evaluate import evaluate_model
from precise.train.loop import TrainConfig, amp_dtype, make_optimizer, train_step
from precise.train.sequences import EvalSet


class TrainingError(RuntimeError):
    """A training job that cannot run: the message says what is missing and what to do."""


class TrainingFailed(TrainingError):
    """Training started and failed (the failure budget is spent, or Ray Train returned an error)."""


# --------------------------------------------------------------------------------------------
# Driver side: vocabulary, weights, data
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    kind: str  # universal | targeted
    task: str | None
    items: list[str]  # index i <-> items[i - 1]
    model_config: ModelConfig
    train_config: TrainConfig
    initial_state: dict[str, torch.Tensor]
    token_table: tuple[np.ndarray, np.ndarray] | None
    projection: TokenProjection | None
    valid: EvalSet
    train_users: int
    data_window: dict[str, Any]
    lineage: dict[str, Any] = field(default_factory=dict)


def extend_vocabulary(parent_items: list[str], catalogue: list[str], sequences: pa.Table) -> list[str]:
    """Parent items first (indices unchanged), then new catalogue items (in catalogue order), then
    items seen in events but missing from the catalogue (their text has not arrived yet)."""
    known = set(parent_items)
    new: dict[str, None] = {}
    for item in catalogue:
        if item not in known:
            new[item] = None
    for seq in sequences.column("item_ids").to_pylist():
        for item in seq:
            if item not in known and item not in new:
                new[item] = None
    return [*parent_items, *new]


def grow_state(fresh: dict[str, torch.Tensor], parent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Start from `fresh` (built for the new vocabulary) and copy every parent tensor into it.

    Per-item tables ([n + 1, ...]) copy the parent's rows; rows of new items keep their fresh
    initialisation (for the token table: the new items' projected LLM states). Any other shape
    change is an error: it would mean the architecture changed, which needs a full retrain.
    """
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
            raise TrainingError(
                f"cannot continue from the parent version: {name} is {tuple(value.shape)} there and "
                f"{tuple(target.shape)} here (model config changed?); train from scratch with --full"
            )
    return state


def cut_before(sequences: pa.Table, until_ts: int | None) -> pa.Table:
    """Each user's events with ts < `until_ts`, re-split (leave-one-out) as the ingest job splits.

    The orchestrator trains cycle d on the events before its boundary, whatever the lake already
    holds beyond it; users with no event before the boundary are dropped."""
    if until_ts is None:
        return sequences
    from precise.ingest.sequences import with_split

    items, stamps, event_ids, users = [], [], [], []
    for user, seq, ts, ids in zip(sequences.column("user_id").to_pylist(), sequences.column("item_ids").to_pylist(),
                                  sequences.column("ts").to_pylist(), sequences.column("event_ids").to_pylist(),
                                  strict=True):
        keep = sum(1 for t in ts if t < until_ts)  # ts are sorted
        if keep:
            users.append(user)
            items.append(seq[:keep])
            stamps.append(ts[:keep])
            event_ids.append(ids[:keep])
    return with_split(pa.table({"user_id": pa.array(users, pa.string()),
                                "item_ids": pa.array(items, pa.list_(pa.string())),
                                "ts": pa.array(stamps, pa.list_(pa.int64())),
                                "event_ids": pa.array(event_ids, pa.list_(pa.string()))}))


def _index_sequences(sequences: pa.Table, lookup: dict[str, int]) -> list[np.ndarray]:
    return [np.fromiter((lookup[i] for i in seq), dtype=np.int64, count=len(seq))
            for seq in sequences.column("item_ids").to_pylist()]


def validation_set(sequences: pa.Table, lookup: dict[str, int], max_len: int) -> EvalSet:
    """Leave-one-out validation: input = the training part, target = the second-to-last item."""
    has_split = sequences.filter(pa.compute.is_valid(sequences.column("valid_item")))
    train_lens = has_split.column("train_len").to_numpy()
    histories = [seq[:n] for seq, n in zip(_index_sequences(has_split, lookup), train_lens, strict=True)]
    keep = [i for i, h in enumerate(histories) if len(h)]
    targets = [lookup[has_split.column("valid_item")[i].as_py()] for i in keep]
    users = [has_split.column("user_id")[i].as_py() for i in keep]
    return EvalSet(tuple(users), right_aligned([histories[i] for i in keep], max_len),
                   np.asarray(targets, dtype=np.int64))


def _catalogue(root: str) -> list[str]:
    """Item ids of the lake's item table, oldest first (a stable order for new indices)."""
    from precise.store.lake import read_items

    table = read_items(root)
    if table.num_rows == 0:
        return []
    table = table.sort_by([("created_ts", "ascending"), ("item_id", "ascending")])
    return table.column("item_id").to_pylist()


def _text_table(config: PreciseConfig, items: list[str], token_dim: int,
                projection: TokenProjection | None) -> tuple[tuple[np.ndarray, np.ndarray], TokenProjection]:
    from precise.store.lake import read_items

    table = read_items(config.storage.resolved_root())
    texts = dict(zip(table.column("item_id").to_pylist(), table.column("text").to_pylist(), strict=True))
    known = {i: texts[i] for i in items if i in texts and texts[i]}
    if not known:
        raise TrainingError("no item texts in the lake (item-catalog not ingested?); the text variants need them")
    tokens = load_token_states(known, config.training.text.model, config.training.text.max_tokens, progress=False)
    projection = projection or fit_token_projection(tokens, token_dim)
    return token_table(tokens, items, token_dim, projection), projection


def _load_parent_assets(registry: ModelRegistry, parent: ModelVersion) -> tuple[list[str], TokenProjection | None]:
    items = json.loads(registry.read_file(parent, ITEMS_FILE))
    try:
        arrays = load_arrays(registry.read_file(parent, PROJECTION_FILE))
        return items, TokenProjection.from_arrays(arrays)
    except RegistryError:
        return items, None


def prepare(config: PreciseConfig, kind: str, full: bool = False, until_ts: int | None = None,
            warm_start: bool = True) -> Prepared:
    """Everything a training run needs, from the lake and the registry."""
    from precise.store.sequences import read_sequences

    t = config.training
    root = config.storage.resolved_root()
    registry = ModelRegistry(root)
    spec = config.sequences.all_scene.name if kind == "universal" else t.target
    stored = read_sequences(root, spec)
    if stored.num_rows == 0:
        raise TrainingError(f"no sequences named {spec!r} under {root}/sequences; run jobs/ingest.py first")
    sequences = cut_before(stored, until_ts)
    if sequences.num_rows == 0:
        raise TrainingError(f"none of the {stored.num_rows} sequences named {spec!r} has events before {until_ts}")

    if kind == "universal":
        parent = None if full else registry.latest("universal")
        lineage = {"parent_version": parent.ref if parent else None}
    elif not warm_start and registry.latest("targeted", t.target) is not None:
        # "Warm start once" (the paper's baseline for figure 4a): continue the previous targeted
        # version instead of re-warm-starting from the newest universal one.
        parent = registry.latest("targeted", t.target)
        lineage = {"parent_version": parent.ref, "warm_started_from": parent.metadata.get("warm_started_from")}
    else:
        parent = registry.latest("universal")
        if parent is None:
            raise TrainingError(
                "targeted training warm-starts from the LATEST universal model; run jobs/universal.py first")
        lineage = {"warm_started_from": parent.ref}

    parent_items, projection = _load_parent_assets(registry, parent) if parent else ([], None)
    items = extend_vocabulary(parent_items, _catalogue(root), sequences)
    model_config = ModelConfig.from_dict(t.model, num_items=len(items))
    train_config = TrainConfig.from_dict(t.universal if kind == "universal" else t.targeted)
    table = None
    if model_config.uses_text:
        table, projection = _text_table(config, items, model_config.token_dim, projection)

    torch.manual_seed(train_config.seed)
    fresh = build_model(model_config, kind, token_table=table)
    state = fresh.state_dict()
    if parent is not None:
        parent_state = grow_state(build_model(model_config, parent.kind, token_table=table).state_dict(),
                                  registry.load_state_dict(parent))
        if kind == parent.kind:
            state = parent_state
        else:
            copied = fresh.warm_start(parent_state)
            state = fresh.state_dict()
            lineage["warm_started_parameters"] = len(copied)

    # Incremental: a continued universal model trains on the users with events since its parent.
    latest_ts = sequences.column("ts").combine_chunks().flatten()
    window_end = int(pa.compute.max(latest_ts).as_py())
    since = None
    if parent is not None and kind == parent.kind:
        since = parent.metadata.get("data_window", {}).get("end_ts")
    lookup = {item: i + 1 for i, item in enumerate(items)}
    return Prepared(
        kind=kind, task=None if kind == "universal" else t.target, items=items, model_config=model_config,
        train_config=train_config, initial_state=state, token_table=table, projection=projection,
        valid=validation_set(sequences, lookup, model_config.max_len),
        train_users=sequences.num_rows,
        data_window={"since_ts": since, "end_ts": window_end, "until_ts": until_ts},
        lineage=lineage,
    )


def _family(config: PreciseConfig, prepared: Prepared) -> str:
    """The sequence family a model trains on: the all-scene one (universal) or its task (targeted)."""
    return config.sequences.all_scene.name if prepared.kind == "universal" else str(prepared.task)


def training_dataset(config: PreciseConfig, prepared: Prepared) -> Any:
    """Ray Dataset of right-aligned windows: `input_ids`/`target_ids` (universal) or `seq` (targeted)."""
    from precise.store.sequences import sequences_dataset

    spec = _family(config, prepared)
    lookup = {item: i + 1 for i, item in enumerate(prepared.items)}
    since = prepared.data_window["since_ts"]
    until = prepared.data_window["until_ts"]
    max_len = prepared.model_config.max_len

    def windows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seqs = []
        for items, ts in zip(batch["item_ids"], batch["ts"], strict=True):
            if until is not None:
                keep = int(np.searchsorted(np.asarray(ts), until))  # events before the cycle boundary
                items, ts = items[:keep], ts[:keep]
            if since is not None and (len(ts) == 0 or int(ts[-1]) <= since):
                continue  # no new events for this user since the parent version
            n = len(items) - 2 if len(items) >= 3 else len(items)  # leave-one-out: as with_split
            if n >= 2:
                seqs.append(np.fromiter((lookup[i] for i in items[:n]), dtype=np.int64, count=int(n)))
        window = right_aligned(seqs, max_len + 1) if seqs else np.zeros((0, max_len + 1), dtype=np.int64)
        return {"seq": window}

    return sequences_dataset(config.storage.resolved_root(), spec).map_batches(
        windows, batch_format="numpy", batch_size=512)


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def universal_batch(seq: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-item pairs from right-aligned windows [B, L + 1]; left columns of padding trimmed."""
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[inputs == PAD] = PAD
    width = max(int((inputs != PAD).sum(1).max()), 1)
    return {"input_ids": inputs[:, -width:], "target_ids": targets[:, -width:]}


def targeted_batch(seq: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BPR samples: per user a random cut c of its target sequence, history = items before c
    (right-aligned), target = the item at c (as `TargetBatches` of the plain loop)."""
    total = seq.shape[1]
    lengths = (seq != PAD).sum(1)
    cut = 1 + (torch.rand(len(seq), generator=generator) * (lengths - 1).clamp(min=1)).long()
    first = total - lengths  # column of each row's oldest item
    target = seq.gather(1, (first + cut)[:, None]).squeeze(1)
    # history column j (right-aligned, width total - 1) holds item first + cut - (total - 1 - j)
    cols = torch.arange(total - 1)[None, :]
    source = first[:, None] + cut[:, None] - (total - 1 - cols)
    history = seq.gather(1, source.clamp(min=0))
    history[source < first[:, None]] = PAD
    return {"input_ids": history, "target_ids": target}


class _LossForward(nn.Module):
    """DDP synchronises gradients of what runs through its forward: make forward the loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)


class _Trainable(nn.Module):
    """Gives `train_step` the `.loss(batch)` it expects, routed through the (DDP) wrapper."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.wrapped(batch)


def _save_checkpoint(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                     metrics: dict[str, float]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(directory, "model.safetensors"))
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    with open(os.path.join(directory, "progress.json"), "w") as handle:
        json.dump({"epoch": epoch, "metrics": metrics}, handle)


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """The Ray Train loop: one per worker process."""
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(cfg["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model_config = ModelConfig(**cfg["model_config"])
    train_config = TrainConfig.from_dict(cfg["train_config"])
    table = ray.get(cfg["token_table"]) if cfg["token_table"] is not None else None
    model = build_model(model_config, cfg["kind"], token_table=table)
    model.load_state_dict(ray.get(cfg["initial_state"]))
    optimizer = make_optimizer(model, train_config)
    start_epoch, resumed_from = 1, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
            optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), weights_only=True))
            with open(os.path.join(directory, "progress.json")) as handle:
                resumed_from = json.load(handle)["epoch"]
        start_epoch = resumed_from + 1

    valid = ray.get(cfg["valid"]) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    generator = torch.Generator().manual_seed(train_config.seed + rank)
    torch.manual_seed(train_config.seed + rank)
    cast = amp_dtype(train_config.amp)
    wrapped, trainable_tokens = None, None
    for epoch in range(start_epoch, train_config.epochs + 1):
        tokens_on = epoch > train_config.freeze_tokens_epochs  # alternate training (paper IV-E)
        if hasattr(model.items, "set_tokens_trainable"):
            model.items.set_tokens_trainable(tokens_on)
        if wrapped is None or tokens_on != trainable_tokens:
            # DDP registers the parameters that require gradients when it wraps: re-wrap when the
            # trainable set changes. Unchosen experts get no gradient, hence find_unused_parameters.
            wrapped = _Trainable(ray.train.torch.prepare_model(
                _LossForward(model), move_to_device=False,
                parallel_strategy_kwargs={"find_unused_parameters": True}))
            trainable_tokens = tokens_on
        started, total, steps, samples = time.perf_counter(), 0.0, 0, 0
        for batch in shard.iter_torch_batches(batch_size=train_config.batch_size, dtypes=torch.int64,
                                              local_shuffle_buffer_size=4 * train_config.batch_size):
            seq = batch["seq"]
            step = universal_batch(seq) if cfg["kind"] == "universal" else targeted_batch(seq, generator)
            total += float(train_step(wrapped, step, optimizer, autocast=cast, grad_clip=train_config.grad_clip))
            steps += 1
            samples += len(seq)
        seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {"epoch": epoch, "loss": total / max(steps, 1), "world_size": world,
                                   "samples_per_s": samples * world / seconds if seconds > 0 else 0.0,
                                   "resumed_from_epoch": resumed_from}
        if rank == 0:
            result = evaluate_model(model, valid, ks=(10,))
            metrics["val_ndcg_at_10"] = result.metrics["N@10"]
            metrics["val_recall_at_10"] = result.metrics["R@10"]
        best_effort(epoch_finished, cfg["kind"], cfg["task"], rank, samples, metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                _save_checkpoint(directory, model, optimizer, epoch, metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    version: ModelVersion
    metrics: dict[str, Any]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"model": self.version.ref, "seconds": round(self.seconds, 1), **self.metrics}


def run_training(config: PreciseConfig, kind: str, full: bool = False, num_workers: int | None = None,
                 storage_path: str | None = None, until_ts: int | None = None,
                 warm_start: bool = True) -> TrainingRun:
    """Prepare, train with Ray Train (TorchTrainer), register; returns the new version."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    if kind not in ("universal", "targeted"):
        raise TrainingError(f"kind must be universal or targeted, got {kind!r}")
    started = time.monotonic()
    t = config.training
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    prepared = prepare(config, kind, full=full, until_ts=until_ts, warm_start=warm_start)
    dataset = training_dataset(config, prepared)
    if t.materialize_windows:
        dataset = dataset.materialize()  # once for all epochs and restarts, not once per epoch
    workers = num_workers or t.num_workers
    loop_config = {
        "kind": kind,
        "task": _family(config, prepared),
        "threads": t.threads_per_worker,
        "model_config": asdict(prepared.model_config),
        "train_config": {**asdict(prepared.train_config), "betas": list(prepared.train_config.betas)},
        "initial_state": ray.put(prepared.initial_state),
        "token_table": ray.put(prepared.token_table) if prepared.token_table is not None else None,
        "valid": ray.put(prepared.valid),
    }
    root = config.storage.resolved_root()
    run_name = f"{kind}{'-' + prepared.task if prepared.task else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path or str(Path(root) / "ray_results"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        # Ray Train V2 (Ray's default) raises once the failure budget is spent, where V1 returned
        # the error in `result.error`: either way the job reports one TrainingError.
        raise TrainingFailed(f"{kind} training failed (after up to {t.max_failures} restarts): {exc}") from exc
    if result.error is not None:
        raise TrainingFailed(f"{kind} training failed: {result.error}")
    with result.checkpoint.as_directory() as directory:
        state = load_file(os.path.join(directory, "model.safetensors"))
    files = {ITEMS_FILE: json.dumps(prepared.items).encode()}
    if prepared.projection is not None:
        files[PROJECTION_FILE] = save_arrays(prepared.projection.as_arrays())
    metadata = {
        "config": config.model_dump(mode="json"),
        "model_config": asdict(prepared.model_config),
        "train_config": asdict(prepared.train_config),
        "data_window": prepared.data_window,
        "ledger": _sequence_state(root, config, prepared),
        "metrics": result.metrics,
        "num_items": len(prepared.items),
        "num_workers": workers,
        "ray_train_run": run_name,
        **prepared.lineage,
    }
    version = ModelRegistry(root).register(kind, state, metadata, task=prepared.task, files=files)
    best_effort(model_registered, kind, _family(config, prepared), version.ref, result.metrics)
    return TrainingRun(version, dict(result.metrics), time.monotonic() - started)


def _sequence_state(root: str, config: PreciseConfig, prepared: Prepared) -> dict[str, Any]:
    """The ledger offsets the training sequences covered (from the sequence builder's state)."""
    from precise.store.sequences import read_state

    return (read_state(root, _family(config, prepared)) or {}).get("offsets", {})
