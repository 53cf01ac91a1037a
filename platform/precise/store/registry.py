"""The model registry (DESIGN section 4): versioned model directories with lineage.

    <root>/models/universal/<version>/            model.safetensors + metadata.json
    <root>/models/targeted/<task>/<version>/
    <root>/models/.../LATEST                       the version in use (training continues from it,
                                                   prediction embeds with it)
    <root>/models/.../MOVES.json                   every explicit move of LATEST (promote / rollback)

Weights are safetensors, never pickle, so loading a registered model cannot run code. A version
is published by writing it to a temporary folder and renaming it into place, and LATEST is
replaced atomically after that: a reader sees a whole version or none. Versions are zero-padded
sequence numbers; two concurrent writers cannot take the same one (mkdir is exclusive).

LATEST moves two ways, both under the pointer's lock:

- registration moves it forwards only, to the version it registers (a slow writer of an older
  version never moves it back past a newer one);
- `move_latest` (`precise models promote|rollback`) moves it to any registered version, forwards
  or back, and records who, when, from and to in MOVES.json. The versions newer than the target are
  *withdrawn*: a later registration trained from a withdrawn version (its `parent_version` or
  `warm_started_from`, e.g. a training that was running during the rollback) is registered but
  does not become LATEST, so it cannot silently undo the move. A registration trained from LATEST
  after the move moves it forwards as usual. Promoting a withdrawn version reinstates it.
"""

from __future__ import annotations

import getpass
import json
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from precise.store.files import Files, local_root

log = logging.getLogger(__name__)

KINDS = ("universal", "targeted")
_WEIGHTS = "model.safetensors"
_META = "metadata.json"
ITEMS_FILE = "items.json"  # the item vocabulary: index i <-> items[i - 1]
PROJECTION_FILE = "token_projection.safetensors"  # the fixed LLM-state projection of the text variants
MOVES_FILE = "MOVES.json"  # the audit log of explicit LATEST moves
_LINEAGE_KEYS = ("parent_version", "warm_started_from")


class RegistryError(LookupError):
    """A version or pointer that does not exist or cannot be read."""


@dataclass(frozen=True)
class ModelVersion:
    kind: str
    task: str | None
    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def ref(self) -> str:
        """A printable reference such as `targeted/like/000003`."""
        return "/".join(p for p in (self.kind, self.task, self.version) if p)


class ModelRegistry:
    def __init__(self, root: str | Path | Files) -> None:
        try:
            # Object stores need another atomic-publish protocol (conditional writes); the local
            # stack and shared filesystems (NFS, EFS, a KubeRay PVC) are supported today.
            self.files = local_root(root)
        except ValueError as exc:
            raise RegistryError(f"model registry: {exc}") from None
        self.root = self.files.local_path("models")

    def _dir(self, kind: str, task: str | None) -> Path:
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r}; expected one of {KINDS}")
        if kind == "targeted" and not task:
            raise RegistryError("a targeted model needs a task name (e.g. 'like' or 'family')")
        return self.root / kind / task if kind == "targeted" else self.root / kind

    def versions(self, kind: str, task: str | None = None) -> list[str]:
        folder = self._dir(kind, task)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def register(self, kind: str, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any],
                 task: str | None = None, files: dict[str, bytes] | None = None) -> ModelVersion:
        """Publish a new version of `kind` (and `task`) and point LATEST at it (unless it was
        trained from a withdrawn version, see the module's docstring).

        `files` are stored beside the weights (e.g. the item vocabulary), published atomically with them.
        """
        folder = self._dir(kind, task)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
        try:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
            save_file(tensors, str(staging / _WEIGHTS))
            for name, content in (files or {}).items():
                if "/" in name or name in (_WEIGHTS, _META, "LATEST"):
                    raise RegistryError(f"invalid extra file name {name!r}")
                (staging / name).write_bytes(content)
            existing = self.versions(kind, task)
            number = int(existing[-1]) + 1 if existing else 1
            while True:
                version = f"{number:06d}"
                meta = {**metadata, "kind": kind, "task": task, "version": version,
                        "registered_at": time.time()}
                (staging / _META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
                if self.files.publish_dir(staging, folder / version):  # a concurrent writer may take it
                    break
                number += 1
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        blocked: list[str] = []

        def allowed() -> bool:  # under the pointer's lock, so no move slips in between
            blocked.extend(ref for ref in self._lineage(meta) if self._is_withdrawn(ref))
            return not blocked

        if not self.files.advance_pointer(folder / "LATEST", version, allowed) and blocked:
            log.warning("registered %s/%s but LATEST stays: it was trained from %s, withdrawn by an explicit "
                        "move of LATEST (precise models promote|rollback); promote it to use it",
                        "/".join(p for p in (kind, task) if p), version, blocked[0])
        return ModelVersion(kind, task, version, folder / version, meta)

    # -- explicit moves of LATEST (promote / rollback) -----------------------------------------------

    def moves(self, kind: str, task: str | None = None) -> list[dict[str, Any]]:
        """The explicit moves of LATEST of `kind` (and `task`), oldest first."""
        path = self._dir(kind, task) / MOVES_FILE
        return json.loads(path.read_text())["moves"] if path.is_file() else []

    def withdrawn(self, kind: str, task: str | None = None) -> list[str]:
        """Versions withdrawn by explicit moves (newer than a move's target when it was made, and
        not promoted since)."""
        out: set[str] = set()
        for move in self.moves(kind, task):
            out = (out | set(move["withdrawn"])) - {move["to"]}
        return sorted(out)

    def move_latest(self, kind: str, version: str, task: str | None = None, action: str = "promote",
                    note: str | None = None) -> dict[str, Any]:
        """Point LATEST at the registered `version` (forwards or back) and record the move; returns
        the record (`moved` False when LATEST named it already: nothing is recorded)."""
        self.get(kind, version, task)  # raises RegistryError for a version that does not exist
        folder = self._dir(kind, task)
        with self.files.pointer_lock(folder / "LATEST") as current:
            record: dict[str, Any] = {
                "action": action, "from": current or None, "to": version,
                "by": f"{getpass.getuser()}@{socket.gethostname()}", "at_ms": int(time.time() * 1000),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "withdrawn": [v for v in self.versions(kind, task) if v > version], "note": note}
            if current == version:
                return {**record, "moved": False}
            # the record first: a move is never made without its record (a crash before the pointer
            # is written leaves a record of a move to redo; repeating the command does it)
            moves = [*self.moves(kind, task), record]
            self.files.write_bytes(str(folder / MOVES_FILE), json.dumps({"moves": moves}, indent=1).encode())
            self.files.write_bytes(str(folder / "LATEST"), version.encode())
        log.info("LATEST of %s moved from %s to %s by %s", "/".join(p for p in (kind, task) if p),
                 record["from"], version, record["by"])
        return {**record, "moved": True}

    @staticmethod
    def _lineage(metadata: dict[str, Any]) -> list[str]:
        return [ref for key in _LINEAGE_KEYS if isinstance(ref := metadata.get(key), str)]

    def _is_withdrawn(self, ref: str) -> bool:
        """Whether a reference such as `universal/000003` or `targeted/like/000002` is withdrawn."""
        parts = ref.split("/")
        if len(parts) not in (2, 3) or parts[0] not in KINDS or (parts[0] == "targeted") != (len(parts) == 3):
            return False
        task = parts[1] if len(parts) == 3 else None
        return parts[-1] in self.withdrawn(parts[0], task)

    def get(self, kind: str, version: str, task: str | None = None) -> ModelVersion:
        path = self._dir(kind, task) / version
        meta_path = path / _META
        if not meta_path.is_file():
            raise RegistryError(f"no model {kind}/{task + '/' if task else ''}{version} in {self.root}")
        return ModelVersion(kind, task, version, path, json.loads(meta_path.read_text()))

    def latest(self, kind: str, task: str | None = None) -> ModelVersion | None:
        pointer = self._dir(kind, task) / "LATEST"
        if not pointer.is_file():
            return None
        return self.get(kind, pointer.read_text().strip(), task)

    def read_file(self, model: ModelVersion, name: str) -> bytes:
        path = model.path / name
        if not path.is_file():
            raise RegistryError(f"{model.ref} has no file {name!r}")
        return path.read_bytes()

    def load_state_dict(self, model: ModelVersion) -> dict[str, torch.Tensor]:
        """The version's weights (safetensors: no code runs on load)."""
        return load_file(str(model.path / _WEIGHTS))


@dataclass
class LoadedModel:
    """A registered version rebuilt for inference: the model (eval mode) and what it needs."""

    version: ModelVersion
    model: torch.nn.Module
    items: list[str]  # index i <-> items[i - 1]
    projection: dict[str, Any] | None  # the fixed token projection's arrays (text variants)

    @property
    def lookup(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.items)}


def load_model(registry: ModelRegistry, version: ModelVersion) -> LoadedModel:
    """Rebuild `version`: its architecture from the metadata, its weights (the token table is one of
    them), its vocabulary and its text projection."""
    from safetensors.numpy import load as load_arrays

    from precise.model import ModelConfig, build_model

    config = ModelConfig(**version.metadata["model_config"])
    state = registry.load_state_dict(version)
    table = (state["items.tokens"].numpy(), state["items.token_mask"].numpy()) if config.uses_text else None
    model = build_model(config, version.kind, token_table=table)
    model.load_state_dict(state)
    model.eval()
    projection = load_arrays(registry.read_file(version, PROJECTION_FILE)) if config.uses_text else None
    return LoadedModel(version, model, json.loads(registry.read_file(version, ITEMS_FILE)), projection)
