"""Your own text model (`training.text.model`: a local folder or a cached Hugging Face id), offline.

A second, differently shaped model (a random-weight BERT of width 48 with a character vocabulary of
its own, saved with save_pretrained) is used to encode item text, through the Ray Data actor pool in
the training recipe, and its width flows into the token table's projection and the trained model.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch

from precise.text import item_token_embeddings
from precise.text.models import ModelNotInstalledError, load_text_model, model_spec

WIDTH = 48
TEXTS = {"1": "Toy Story (1995). Genres: Animation, Children's, Comedy",
         "2": "GoldenEye (1995). Genres: Action, Adventure, Thriller", "3": "Heat"}


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random BERT (2 layers, width 48) and a character WordPiece tokenizer, as save_pretrained writes them."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def test_a_local_folder_is_a_text_model_of_its_own_width(own_model, tmp_path):
    emb = item_token_embeddings(TEXTS, model=str(own_model), max_tokens=12, cache_dir=tmp_path, progress=False)
    spec = model_spec(str(own_model))
    assert spec.dim == WIDTH and spec.name.startswith("own-tiny-bert-")
    assert (emb.model, emb.dim, emb.states.shape) == (spec.name, WIDTH, (3, 12, WIDTH))
    encoder = load_text_model(str(own_model))
    assert emb.mask.sum(axis=1).tolist() == [min(len(encoder.tokenizer.tokenize(t)), 12) for t in TEXTS.values()]
    assert np.isfinite(emb.states).all() and np.abs(emb.states[emb.mask]).sum(axis=-1).all()
    # another model saved into the same folder is another cache entry, never the old states
    other = save_tiny_bert(tmp_path / "copy", seed=1)
    assert model_spec(str(other)).name != spec.name
    assert model_spec(str(save_tiny_bert(tmp_path / "again", seed=0))).name.split("-")[-1] == spec.name.split("-")[-1]


def test_a_hugging_face_id_from_the_local_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    save_tiny_bert(hub / "models--acme--tiny-bert" / "snapshots" / "0123abcd")
    (hub / "models--acme--tiny-bert" / "refs").mkdir()
    (hub / "models--acme--tiny-bert" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    spec = model_spec("acme/tiny-bert")
    assert spec.dim == WIDTH and spec.name.startswith("own-acme--tiny-bert-") and spec.folder.endswith("0123abcd")
    emb = item_token_embeddings(TEXTS, model="acme/tiny-bert", max_tokens=6, cache_dir=tmp_path, progress=False)
    assert emb.states.shape == (3, 6, WIDTH)


def test_a_missing_model_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ModelNotInstalledError, match=r"config.json does not exist; a model folder holds"):
        model_spec(str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotInstalledError, match=r"'acme/tiny-llm' is not in the local Hugging Face "
                                                     r"cache \(.*/hub\).*hf download acme/tiny-llm"):
        item_token_embeddings({"1": "Heat"}, model="acme/tiny-llm", cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown text model 'gpt 9'.*a local model folder"):
        model_spec("gpt 9")


@pytest.mark.integration
def test_training_encodes_with_an_own_model_in_a_ray_actor_pool(own_model, ml100k_copy, tmp_path, monkeypatch):
    """The recipe's token table comes from the local model, encoded by Ray Data actors (not this
    process), and the model trains and registers with it."""
    import ray

    from precise.store.registry import ModelRegistry
    from precise.text.pool import EncodePool
    from precise.train import recipe

    model = {"max_len": 50, "id_dim": 16, "text_dim": 16, "token_dim": 16, "num_layers": 1, "num_negatives": 32,
             "fusion": "moe"}
    text = {"model": str(own_model), "max_tokens": 12, "encode_actors": 1, "encode_num_cpus": 0.5,
            "encode_batch_size": 256}
    config = ml100k_copy(tmp_path / "lake", training={"model": model, "text": text,
                                                      "universal": {"epochs": 1, "batch_size": 128, "seed": 5}})
    assert ray.is_initialized()  # the session lake was ingested with Ray: setup encodes on it
    home = tmp_path / "home"
    monkeypatch.setenv("PRECISE_HOME", str(home))  # a token cache of this test's own
    load_text_model.cache_clear()
    setup = recipe.setup(config, "universal", start="scratch")
    assert load_text_model.cache_info().currsize == 0  # nothing was encoded in this process
    table, mask = setup.payload.token_table
    assert setup.projection.components.shape == (WIDTH, 16) and setup.projection.mean.shape == (WIDTH,)
    assert table.shape == (len(setup.items) + 1, 12, 16) and mask.shape == (len(setup.items) + 1, 12)
    cached = list((home / "cache" / "token-embeddings").glob(f"{model_spec(str(own_model)).name}-m12-v1"))
    assert cached and len(list(cached[0].rglob("*.npy"))) > 1000  # one file per distinct item text

    # the pool's states are the model's: the same as encoding here
    pooled = item_token_embeddings(TEXTS, model=str(own_model), max_tokens=12, cache_dir=tmp_path / "p",
                                   progress=False, pool=EncodePool(actors=1, num_cpus=0.5))
    here = item_token_embeddings(TEXTS, model=str(own_model), max_tokens=12, cache_dir=tmp_path / "h",
                                 progress=False)
    assert (pooled.mask == here.mask).all() and np.allclose(pooled.states, here.states, atol=1e-3)

    state, progress = recipe.fit_in_process(setup, log=None)
    version = recipe.register(setup, state, progress, config, ModelRegistry(config.storage.resolved_root()))
    assert version.metadata["text"]["model"] == str(own_model) and len(progress.history) == 1
    tables = [v for k, v in state.items() if "token" in k and v.ndim == 3]
    assert tables and all(v.shape[1:] == (12, 16) for v in tables), [k for k in state if "token" in k]
