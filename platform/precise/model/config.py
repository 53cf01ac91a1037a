"""Model configuration and the ablation variants (paper tables VI and VII).

Item embedding width = `id_dim` (when the variant has an ID part) + `text_dim` (when it has a text
part); that is also the Transformer width. This follows the paper ("128 for both ID and token
embedding", concatenated), so the fused variants are wider than id_only / llm_only: compare
them knowing that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# fusion: how an item is embedded.
#   id   ID(i) only (PRECISE-ID, SASRec-like)      llm   MoE(x_i) only (PRECISE-LLM)
#   pool ID(i) + mean-pool(x_i) (PRECISE-Pool)     moe   ID(i) + MoE(x_i) (PRECISE, eq. 4)
FUSIONS = ("id", "llm", "pool", "moe")
TARGET_LOSSES = ("users", "items", "both")
PAD = 0  # item index of padding (and of "no target")
UNIVERSAL_VARIANTS: dict[str, str] = {"id_only": "id", "llm_only": "llm", "pool": "pool", "ut": "moe",
                                      # ID only at the fused variants' width (id_dim + text_dim): a control
                                      # that separates what the text adds from what the extra width adds
                                      "id_wide": "id"}
# Two-stage variants on the target task: TT alone (from scratch) and UT then TT (warm start).
TARGETED_VARIANTS = ("tt", "ut_tt")


@dataclass(frozen=True)
class ModelConfig:
    num_items: int  # catalogue size; item indices are 1..num_items, 0 is padding
    max_len: int = 200  # sequence length (positions)
    fusion: str = "moe"  # how an item is embedded: id | llm | pool | moe (FUSIONS above)
    id_dim: int = 50  # width of the item ID embedding
    text_dim: int = 50  # width of the text part (MoE or mean-pool output)
    token_dim: int = 50  # width of the trainable token table (LLM states projected by PCA)
    num_experts: int = 4  # K attention-pooling experts
    top_k: int = 2  # experts kept by the gate
    num_layers: int = 2  # Transformer blocks
    num_heads: int = 1  # attention heads (must divide the width)
    ffn_dim: int | None = None  # None: the model width
    dropout: float = 0.2  # dropout rate in the Transformer blocks
    attn_dropout: float | None = None  # dropout on attention weights; None: `dropout`
    temperature: float = 0.05  # logits = cos(user, item) / temperature
    num_negatives: int = 128  # uniform negatives per position (sampled softmax)
    shared_negatives: bool = False  # True: one uniform draw per batch shared by all positions (cheaper)
    in_batch_negatives: int = 0  # extra negatives drawn from other sequences' items in the batch
    head_hidden: int | None = None  # targeted MLP hidden width; None: 2 x width
    head_residual: bool = True  # targeted user = last position + MLP(concat), MLP output zero-init
    # softmax over every item instead of sampled negatives (next-item loss and the targeted `items`
    # objective): exact, and cheap while the catalogue is small (one [positions, items] product)
    full_softmax: bool = False
    # targeted training's objective: users = paper eq. 6 (the true user above the batch's other users
    # for the next item); items = softmax of the next item over items (the negatives above); both = sum
    target_loss: str = "users"
    items_weight: float = 1.0  # weight of the items term when target_loss is both

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.num_items < 1 or self.max_len < 1:
            raise ValueError("num_items and max_len must be >= 1")
        if self.uses_text and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_negatives < 1 and self.in_batch_negatives < 1 and not self.full_softmax:
            raise ValueError("sampled softmax needs num_negatives or in_batch_negatives >= 1 (or full_softmax)")
        if self.target_loss not in TARGET_LOSSES:
            raise ValueError(f"target_loss must be one of {TARGET_LOSSES}, got {self.target_loss!r}")

    @property
    def uses_id(self) -> bool:
        return self.fusion != "llm"

    @property
    def uses_text(self) -> bool:
        return self.fusion != "id"

    @property
    def width(self) -> int:
        return (self.id_dim if self.uses_id else 0) + (self.text_dim if self.uses_text else 0)

    @property
    def attn_dropout_rate(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or self.width

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any) -> ModelConfig:
        """Build from a YAML mapping; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{**dict(values), **overrides})

    def with_fusion(self, fusion: str) -> ModelConfig:
        return replace(self, fusion=fusion)
