"""PRECISE model: embedding fusion (ID ⊕ MoE over LLM token states), the causal universal
Transformer and the bidirectional targeted Transformer (paper section IV)."""

from precise.model.build import build_model
from precise.model.config import PAD, TARGETED_VARIANTS, UNIVERSAL_VARIANTS, ModelConfig
from precise.model.fusion import ItemEncoder, TopKGate
from precise.model.targeted import TargetedModel
from precise.model.text_adapter import hashed_token_embeddings, load_token_states, token_table
from precise.model.universal import UniversalModel

__all__ = [
    "PAD",
    "TARGETED_VARIANTS",
    "UNIVERSAL_VARIANTS",
    "ItemEncoder",
    "ModelConfig",
    "TargetedModel",
    "TopKGate",
    "UniversalModel",
    "build_model",
    "hashed_token_embeddings",
    "load_token_states",
    "token_table",
]
