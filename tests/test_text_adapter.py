"""Token states -> trainable token table (PCA), and the hashed stand-in."""

from __future__ import annotations

import numpy as np

from precise.model.text_adapter import hashed_token_embeddings, token_table
from precise.text import TokenEmbeddings


def test_hashed_stand_in_has_the_text_interface_shapes():
    emb = hashed_token_embeddings(
        {"a": "Toy Story (1995). Genres: Comedy", "b": "Heat"}, max_tokens=4, dim=16
    )
    assert emb.states.shape == (2, 4, 16) and emb.states.dtype == np.float16
    assert emb.mask.tolist() == [[True] * 4, [True, False, False, False]]
    again = hashed_token_embeddings({"b": "heat"}, max_tokens=4, dim=16)
    assert np.array_equal(again.states[0, 0], emb.states[1, 0])  # same word, same vector


def test_token_table_projects_and_lays_out_by_item_index():
    rng = np.random.default_rng(0)
    states = rng.standard_normal((3, 5, 40)).astype(np.float16)
    states[:, 0] *= 100  # an "attention sink" token with a huge norm
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=bool)
    tokens = TokenEmbeddings(["x", "y", "z"], states, mask, "test", 40, 5)
    table, table_mask = token_table(tokens, ["z", "x", "missing"], token_dim=8)
    assert table.shape == (4, 5, 8) and table_mask.shape == (4, 5)
    assert table_mask[1].tolist() == mask[2].tolist() and table_mask[2].tolist() == mask[0].tolist()
    # padding row and the item without text: one valid all-zero token
    for row in (0, 3):
        assert table_mask[row].tolist() == [True, False, False, False, False]
        assert not table[row].any()
    assert not table[2][~mask[0]].any()  # padded token slots stay zero
    valid = table[table_mask & np.abs(table).sum(-1).astype(bool)]
    assert abs(float(np.sqrt((valid**2).mean())) - 1.0) < 0.3  # unit RMS scale
    assert np.isfinite(table).all()


def test_token_table_cache_round_trip_and_item_check(tmp_path):
    from precise.model.text_adapter import load_token_table, save_token_table

    emb = hashed_token_embeddings({"a": "one two", "b": "three"}, max_tokens=3, dim=8)
    table, mask = token_table(emb, ["a", "b"], token_dim=4)
    path = tmp_path / "cache" / "t.npz"
    save_token_table(path, table, mask, ["a", "b"], emb.model)
    loaded_table, loaded_mask, model = load_token_table(path, ["a", "b"])
    assert model == "hashed" and np.array_equal(loaded_mask, mask)
    assert np.allclose(loaded_table, table, atol=1e-2) and loaded_table.dtype == np.float32
    assert load_token_table(path, ["b", "a"]) is None  # another item order is another table
    assert load_token_table(tmp_path / "missing.npz", ["a", "b"]) is None
