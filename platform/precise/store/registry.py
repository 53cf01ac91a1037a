"""The model registry (DESIGN section 4): versioned model directories with lineage.

    <root>/models/universal/<version>/            model.safetensors + metadata.json
    <root>/models/targeted/<task>/<version>/
    <root>/models/.../LATEST                       the newest registered version's name

Weights are safetensors, never pickle, so loading a registered model cannot run code. A version
is published by writing it to a temporary folder and renaming it into place, and LATEST is
replaced atomically after that: a reader sees a whole version or none. Versions are zero-padded
sequence numbers; two concurrent writers cannot take the same one (mkdir is exclusive).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from precise.store.files import Files, local_root

KINDS = ("universal", "targeted")
_WEIGHTS = "model.safetensors"
_META = "metadata.json"
ITEMS_FILE = "items.json"  # the item vocabulary: index i <-> items[i - 1]
PROJECTION_FILE = "token_projection.safetensors"  # the fixed LLM-state projection of the text variants


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
        """Publish a new version of `kind` (and `task`) and point LATEST at it.

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
        self.files.advance_pointer(folder / "LATEST", version)
        return ModelVersion(kind, task, version, folder / version, meta)

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
