"""LLM token embeddings of item text (the paper's `x_i`, section IV.B), cached on disk.

    from precise.text import item_token_embeddings
    emb = item_token_embeddings({"1": "Toy Story (1995). Genres: Animation"}, model="minilm")
    emb.states  # float16 [n_items, max_tokens, dim], zero where emb.mask is False
"""

from precise.text.embeddings import TokenEmbeddings, item_token_embeddings
from precise.text.models import MODELS, ModelNotInstalledError, TextModelSpec, load_text_model, model_spec

__all__ = [
    "MODELS",
    "ModelNotInstalledError",
    "TextModelSpec",
    "TokenEmbeddings",
    "item_token_embeddings",
    "load_text_model",
    "model_spec",
]
