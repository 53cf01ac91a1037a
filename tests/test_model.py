"""Unit tests of the PRECISE model: causality, gate, warm start, freeze switch, losses."""

from __future__ import annotations

import math

import pytest
import torch

from precise.config import TrainOptions
from precise.model import ItemEncoder, ModelConfig, TopKGate, build_model
from precise.model.losses import bpr_user_loss, sampled_softmax_loss
from precise.train.recipe import Trainable, make_optimizer, train_step

N_ITEMS = 30


def config(**kw: object) -> ModelConfig:
    base = dict(
        num_items=N_ITEMS,
        max_len=8,
        fusion="moe",
        id_dim=8,
        text_dim=8,
        token_dim=8,
        num_experts=4,
        top_k=2,
        num_layers=2,
        num_heads=2,
        dropout=0.0,
        num_negatives=5,
    )
    return ModelConfig(**{**base, **kw})


def batch_ids(seed: int = 0, b: int = 4, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, N_ITEMS + 1, (b, n), generator=g)
    ids[0, :3] = 0  # a left-padded (right-aligned) row
    return ids


@pytest.mark.parametrize("fusion", ["id", "llm", "pool", "moe"])
def test_future_item_cannot_change_causal_output_but_changes_bidirectional(fusion, token_table_small):
    torch.manual_seed(0)
    ut = build_model(config(fusion=fusion), "universal", token_table_small).eval()
    tt = build_model(config(fusion=fusion), "targeted", token_table_small).eval()
    ids = batch_ids()
    changed = ids.clone()
    changed[:, -1] = torch.where(ids[:, -1] == 1, 2, 1)  # a different most recent (future) item
    with torch.no_grad():
        before, after = ut.encode(ids), ut.encode(changed)
        assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)
        assert not torch.allclose(before[:, -1], after[:, -1], atol=1e-4)
        t_before, t_after = tt.encode(ids), tt.encode(changed)
        earlier = (ids[:, :-1] != 0).unsqueeze(-1)
        assert ((t_before[:, :-1] - t_after[:, :-1]).abs() * earlier).amax() > 1e-4


def test_padding_does_not_leak_into_real_positions(token_table_small):
    torch.manual_seed(0)
    ut = build_model(config(), "universal", token_table_small).eval()
    ids = batch_ids()[:1]
    shorter = ids[:, 3:]  # the same sequence with less left padding
    with torch.no_grad():
        assert torch.allclose(ut.user_embeddings(ids), ut.user_embeddings(shorter), atol=1e-5)


def test_gate_gives_exactly_k_nonzero_weights_summing_to_one():
    torch.manual_seed(0)
    for k in (1, 2, 3):
        gate = TopKGate(token_dim=8, num_experts=5, top_k=k)
        w = gate(torch.randn(64, 8))
        assert ((w != 0).sum(dim=1) == k).all()
        assert torch.allclose(w.sum(dim=1), torch.ones(64))
        assert (w >= 0).all()


def test_moe_item_embedding_uses_exactly_k_experts(token_table_small):
    torch.manual_seed(0)
    model = build_model(config(top_k=2), "universal", token_table_small)
    items = model.items
    rows = torch.arange(1, N_ITEMS + 1)
    weights = items.gate(items._mean_tokens(rows))
    assert ((weights != 0).sum(1) == 2).all()
    # The semantic embedding is exactly the gate-weighted sum of the chosen experts.
    expert_out = items.experts(items.tokens[rows], items.token_mask[rows])
    manual = (weights[:, :, None] * expert_out).sum(1)
    assert torch.allclose(items.semantic(rows), manual, atol=1e-6)


@pytest.mark.parametrize("fusion", ["id", "llm", "pool", "moe"])
def test_item_lookup_matches_table_and_padding_is_zero(fusion, token_table_small):
    torch.manual_seed(0)
    model = build_model(config(fusion=fusion), "universal", token_table_small)
    table = model.items()
    assert table.shape == (N_ITEMS + 1, model.config.width)
    assert torch.count_nonzero(table[0]) == 0
    ids = batch_ids()
    assert torch.allclose(model.items(ids), table[ids], atol=1e-6)


def test_warm_start_copies_every_shared_weight(token_table_small):
    torch.manual_seed(0)
    ut = build_model(config(max_len=8), "universal", token_table_small)
    opt = make_optimizer(ut, TrainOptions(lr=1e-2), ())
    train_step(Trainable(ut), {"input_ids": batch_ids(), "target_ids": batch_ids(1)}, opt)  # move off init
    torch.manual_seed(1)
    tt = build_model(config(max_len=6), "targeted", token_table_small)  # shorter window
    copied = tt.warm_start(ut.state_dict())
    ut_state, tt_state = ut.state_dict(), tt.state_dict()
    shared = set(ut_state) & set(tt_state)
    assert set(copied) == shared
    assert {n for n in tt_state if n not in shared} == {n for n in tt_state if n.startswith("head.")}
    for name in shared:
        expected = ut_state[name]
        if name == "encoder.pos_emb.weight":
            expected = expected[:6]  # the 6 most recent positions
        assert torch.equal(tt_state[name], expected), name


def test_warm_start_refuses_mismatched_shapes(token_table_small):
    ut = build_model(config(id_dim=8), "universal", token_table_small)
    tt = build_model(config(id_dim=16), "targeted", token_table_small)
    with pytest.raises(ValueError, match="cannot warm-start"):
        tt.warm_start(ut.state_dict())


def test_freeze_switch_leaves_token_table_unchanged(token_table_small):
    torch.manual_seed(0)
    model = build_model(config(), "universal", token_table_small)
    opt = make_optimizer(model, TrainOptions(lr=1e-2, weight_decay=0.1), ())
    batch = {"input_ids": batch_ids(), "target_ids": batch_ids(1)}
    train_step(Trainable(model), batch, opt)  # give the table Adam moments first

    model.items.set_tokens_trainable(False)
    tokens, ids = model.items.tokens.detach().clone(), model.items.id_emb.weight.detach().clone()
    for _ in range(2):
        train_step(Trainable(model), batch, opt)
    assert torch.equal(model.items.tokens, tokens)
    assert not torch.equal(model.items.id_emb.weight, ids)

    model.items.set_tokens_trainable(True)
    train_step(Trainable(model), batch, opt)
    assert not torch.equal(model.items.tokens, tokens)


def test_frozen_mean_cache_never_serves_stale_values(token_table_small):
    model = build_model(config(fusion="pool"), "universal", token_table_small)
    items = model.items
    items.set_tokens_trainable(False)
    first = items._mean_tokens(None).clone()
    with torch.no_grad():
        items.tokens.add_(1.0)  # e.g. a load_state_dict while frozen
    assert not torch.allclose(items._mean_tokens(None), first)


def manual_universal_loss(model, batch, seed: int) -> torch.Tensor:
    """Eq. 5 written out: per-position (or shared) uniform negatives, cosine / temperature."""
    cfg = model.config
    torch.manual_seed(seed)
    targets = batch["target_ids"]
    has = targets != 0
    pos = targets[has]
    shape = (cfg.num_negatives,) if cfg.shared_negatives else (pos.numel(), cfg.num_negatives)
    neg = torch.randint(1, N_ITEMS + 1, shape)
    table = model.items()
    q = model.encode(batch["input_ids"], table)[has]
    q = q / q.norm(dim=-1, keepdim=True) / cfg.temperature
    t = table / table.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    neg_logits = q @ t[neg].T if cfg.shared_negatives else torch.einsum("pw,prw->pr", q, t[neg])
    return sampled_softmax_loss((q * t[pos]).sum(-1), neg_logits, pos, neg)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dims", [8, 2])  # width 16: full-table path; width 4: embed-only-used path
def test_universal_loss_equals_eq5_on_every_path(shared, dims, token_table_small):
    torch.manual_seed(0)
    cfg = config(shared_negatives=shared, num_negatives=5, id_dim=dims, text_dim=dims)
    model = build_model(cfg, "universal", token_table_small).eval()
    batch = {"input_ids": batch_ids(), "target_ids": batch_ids(1)}
    torch.manual_seed(3)
    loss = model.loss(batch)
    assert torch.allclose(loss, manual_universal_loss(model, batch, 3), atol=1e-5)
    loss.backward()
    assert model.items.tokens.grad is not None and model.items.id_emb.weight.grad is not None


def test_sampled_softmax_matches_hand_computation():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    pos_ids = torch.tensor([7, 3])
    neg_ids = torch.tensor([[1, 2], [4, 3]])  # row 1's second negative is the positive: ignored
    expected = (
        -(2.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(1.0)))
        - (0.0 - math.log(math.exp(0.0) + math.exp(0.0)))
    ) / 2
    assert sampled_softmax_loss(pos, neg, pos_ids, neg_ids).item() == pytest.approx(expected, rel=1e-6)
    shared = sampled_softmax_loss(pos, neg[:1].expand(2, -1), pos_ids, torch.tensor([1, 2]))
    rows = [-(2.0 - math.log(math.exp(2) + 1 + math.e)), -(0.0 - math.log(1 + 1 + math.e))]
    assert shared.item() == pytest.approx(sum(rows) / 2, rel=1e-6)


def test_bpr_user_loss_matches_eq6():
    # scores[u, v] = user u . item of sample v
    scores = torch.tensor([[3.0, 0.0, 1.0], [1.0, 2.0, 1.0], [0.0, 0.0, 2.0]])
    items = torch.tensor([10, 11, 10])  # samples 0 and 2 share their next item
    pairs = [(1, 0), (0, 1), (2, 1), (1, 2)]  # (other user u', sample v); (2,0) and (0,2) skipped
    expected = sum(-math.log(1 / (1 + math.exp(-(scores[v, v] - scores[u, v]).item()))) for u, v in pairs) / 4
    assert bpr_user_loss(scores, items).item() == pytest.approx(expected, rel=1e-6)


def test_targeted_loss_backprops_into_encoder_and_head(token_table_small):
    torch.manual_seed(0)
    tt = build_model(config(), "targeted", token_table_small)
    ids = batch_ids()
    loss = tt.loss({"input_ids": ids, "target_ids": torch.tensor([1, 2, 3, 4])})
    loss.backward()
    assert tt.head[0].weight.grad is not None and tt.encoder.blocks[0].attn.q.weight.grad is not None
    assert tt.user_embeddings(ids[:, 2:]).shape == (4, tt.config.width)  # shorter input is padded


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fusion"):
        config(fusion="nope")
    with pytest.raises(ValueError, match="top_k"):
        config(top_k=5)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"num_items": 3, "widht": 4})
    with pytest.raises(ValueError, match="token states"):
        ItemEncoder(config())
    with pytest.raises(ValueError, match="token table"):
        build_model(config(), "universal", None)
