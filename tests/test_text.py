"""precise.text: token states of item text, cached on disk (MiniLM for speed, one SmolLM2 check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precise.text import TextModelSpec, item_token_embeddings, load_text_model
from precise.text.cache import TokenCache, text_key
from precise.text.models import ModelNotInstalledError, TextEncoder

torch.set_num_threads(2)  # the dev box has 2 shared cores

TEXTS = {
    "1": "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "2": "GoldenEye (1995). Genres: Action, Adventure, Thriller",
    "3": "Heat",
}


def embed(texts, tmp_path, **kwargs):
    kwargs = {"model": "minilm", "max_tokens": 16, "cache_dir": tmp_path, "progress": False} | kwargs
    return item_token_embeddings(texts, **kwargs)


@pytest.fixture
def encode_calls(monkeypatch):
    """Records the texts each TextEncoder.encode call receives."""
    calls: list[list[str]] = []
    original = TextEncoder.encode

    def spy(self, texts, max_tokens):
        calls.append(list(texts))
        return original(self, texts, max_tokens)

    monkeypatch.setattr(TextEncoder, "encode", spy)
    return calls


def test_shapes_dtype_and_mask(tmp_path):
    emb = embed(TEXTS, tmp_path, max_tokens=8)
    tokenizer = load_text_model("minilm").tokenizer
    assert emb.item_ids == ["1", "2", "3"]
    assert (emb.model, emb.dim, emb.max_tokens) == ("minilm", 384, 8)
    assert emb.states.shape == (3, 8, 384) and emb.states.dtype == np.float16
    assert emb.mask.shape == (3, 8) and emb.mask.dtype == np.bool_
    for row, text in enumerate(TEXTS.values()):
        n = min(len(tokenizer.tokenize(text)), 8)
        assert emb.mask[row].tolist() == [True] * n + [False] * (8 - n)
        assert not emb.states[row, n:].any()
        assert np.abs(emb.states[row, :n]).sum(axis=-1).all()  # real tokens are not zero vectors


@pytest.mark.parametrize("max_tokens", [2, 32])
def test_states_are_last_layer_of_text_tokens_without_specials(tmp_path, max_tokens):
    text = TEXTS["1"]
    emb = embed({"1": text}, tmp_path, max_tokens=max_tokens)
    encoder = load_text_model("minilm")
    tokens = encoder.tokenizer(text, truncation=True, max_length=max_tokens + 2, return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder.model(**tokens).last_hidden_state[0].numpy()
    expected = hidden[1:-1]  # drop [CLS] and [SEP]
    n = len(expected)
    assert n == min(len(encoder.tokenizer.tokenize(text)), max_tokens)
    assert emb.mask[0].sum() == n
    np.testing.assert_allclose(emb.states[0, :n].astype(np.float32), expected, atol=2e-3, rtol=2e-3)


def test_order_follows_input_and_same_text_gives_identical_states(tmp_path):
    first = embed(TEXTS, tmp_path)
    reordered = {"3": TEXTS["3"], "dup-of-1": TEXTS["1"], "1": TEXTS["1"], "2": TEXTS["2"]}
    second = embed(reordered, tmp_path / "fresh-cache")
    assert second.item_ids == ["3", "dup-of-1", "1", "2"]
    rows = {item_id: i for i, item_id in enumerate(second.item_ids)}
    np.testing.assert_array_equal(second.states[rows["dup-of-1"]], second.states[rows["1"]])
    for i, item_id in enumerate(first.item_ids):
        np.testing.assert_array_equal(second.mask[rows[item_id]], first.mask[i])
        np.testing.assert_allclose(second.states[rows[item_id]], first.states[i], atol=1e-2)


def test_cache_hit_does_not_load_or_run_the_model(tmp_path, encode_calls, monkeypatch):
    first = embed(TEXTS, tmp_path)
    assert sum(len(c) for c in encode_calls) == 3

    def no_model(name):
        raise AssertionError("model loaded on a cache hit")

    monkeypatch.setattr("precise.text.embeddings.load_text_model", no_model)
    again = embed(TEXTS, tmp_path)
    assert len(encode_calls) == 1
    np.testing.assert_array_equal(again.states, first.states)  # float16 round-trips exactly
    np.testing.assert_array_equal(again.mask, first.mask)


def test_incremental_call_encodes_only_new_texts(tmp_path, encode_calls):
    embed({"1": TEXTS["1"], "2": TEXTS["2"]}, tmp_path)
    encode_calls.clear()
    emb = embed(TEXTS | {"4": "Casablanca (1942)", "5": "Heat"}, tmp_path)  # "5" shares "3"'s text
    assert sorted(t for call in encode_calls for t in call) == sorted(["Heat", "Casablanca (1942)"])
    assert emb.item_ids == ["1", "2", "3", "4", "5"]


def test_duplicate_texts_encoded_once_and_batches_respected(tmp_path, encode_calls):
    texts = {str(i): f"movie number {i % 5}" for i in range(20)}
    embed(texts, tmp_path, batch_size=2)
    assert sum(len(c) for c in encode_calls) == 5
    assert all(len(c) <= 2 for c in encode_calls)


def test_batching_and_padding_do_not_change_states(tmp_path):
    one = embed(TEXTS, tmp_path / "a", batch_size=1)
    many = embed(TEXTS, tmp_path / "b", batch_size=8)
    np.testing.assert_array_equal(one.mask, many.mask)
    np.testing.assert_allclose(one.states.astype(np.float32), many.states.astype(np.float32), atol=1e-2)


def test_keyed_by_model_and_max_tokens(tmp_path, encode_calls):
    embed(TEXTS, tmp_path, max_tokens=4)
    embed(TEXTS, tmp_path, max_tokens=8)
    assert len(encode_calls) == 2  # a different m is a different cache entry
    assert {p.name for p in tmp_path.iterdir()} == {"minilm-m4-v1", "minilm-m8-v1"}


def test_damaged_entry_is_recomputed(tmp_path, encode_calls):
    first = embed(TEXTS, tmp_path)
    cache = TokenCache(tmp_path, "minilm", 16, 384)
    cache.path(text_key(TEXTS["2"])).write_bytes(b"\x93NUMPY truncated")
    encode_calls.clear()
    again = embed(TEXTS, tmp_path)
    assert encode_calls == [[TEXTS["2"]]]
    np.testing.assert_allclose(again.states, first.states, atol=1e-2)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    cache = TokenCache(tmp_path, "minilm", 16, 384)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("precise.text.cache.np.save", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.put(text_key("x"), np.zeros((2, 384), dtype=np.float16))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert cache.get(text_key("x")) is None


def test_default_cache_dir_is_under_precise_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PRECISE_HOME", str(tmp_path))
    item_token_embeddings({"3": "Heat"}, model="minilm", max_tokens=4, progress=False)
    assert list((tmp_path / "cache" / "token-embeddings" / "minilm-m4-v1").rglob("*.npy"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"item_texts": {"a": "ok", "b": ""}}, "item 'b' has empty"),
        ({"item_texts": {"a": "ok", "b": "  \n"}}, "item 'b' has empty"),
        ({"item_texts": {"a": None}}, "item 'a' has empty or non-string"),
        ({"model": "gpt-9"}, r"unknown text model 'gpt-9'; choose one of \['minilm', 'smollm2'\]"),
        ({"max_tokens": 0}, "max_tokens must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"item_texts": {"z": "\u200b"}}, "item 'z'.* has no tokens"),
    ],
)
def test_invalid_inputs_raise_clear_errors(tmp_path, kwargs, message):
    args = {"item_texts": {"a": "Heat"}, "model": "minilm", "max_tokens": 4, "cache_dir": tmp_path,
            "progress": False} | kwargs
    with pytest.raises(ValueError, match=message):
        item_token_embeddings(**args)


def test_missing_model_package_says_run_setup():
    spec = TextModelSpec("ghost", "precise_no_such_package", "ghost-model==1.0", "", None, 8, "absent")
    with pytest.raises(ModelNotInstalledError, match="run scripts/setup"):
        spec.model_dir()


@pytest.mark.slow  # 25-40 s on 2 shared CPUs, nearly all of it transformers parsing the GGUF file
def test_smollm2_default_model(tmp_path):
    texts = {"1": TEXTS["1"], "3": TEXTS["3"]}
    emb = item_token_embeddings(texts, max_tokens=8, cache_dir=tmp_path, progress=False)
    tokenizer = load_text_model("smollm2").tokenizer
    assert (emb.model, emb.dim, emb.states.shape) == ("smollm2", 576, (2, 8, 576))
    assert emb.mask.sum(axis=1).tolist() == [min(len(tokenizer.tokenize(t)), 8) for t in texts.values()]
    assert np.isfinite(emb.states).all()


def test_cache_write_error_is_raised_not_swallowed(tmp_path, monkeypatch):
    def broken_put(self, key, states):
        raise OSError("read-only file system")

    monkeypatch.setattr(TokenCache, "put", broken_put)
    with pytest.raises(OSError, match="read-only"):
        embed(TEXTS, tmp_path, batch_size=1)
