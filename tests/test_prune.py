"""Structured pruning: exact at 0 %, tensors really shrink, parameter counts match the dims, scores pick
dead structures, fewer MACs, deterministic rebuild."""

from __future__ import annotations

import pytest
import torch
from support import build_ctx

from vitshrink.compress import build
from vitshrink.compress import handler_of, planned_handlers
from vitshrink.compress.prune import (
    calibration_batch,
    importance_scores,
    keep_count,
    prune_structure,
    prune_vit,
)
from vitshrink.models import TeacherSpec, create_model, param_count
from vitshrink.objectives.macs import count_macs
from vitshrink.spaces import CompressionConfig, ConfigError

torch.set_num_threads(2)

SCORES = ("magnitude", "taylor", "activation")



def _state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _out(model, x):
    return model.eval()(x)


def test_registered_and_inactive_at_zero():
    assert planned_handlers(CompressionConfig()) == []
    for config in (CompressionConfig({"prune": {"heads": 0.5}}), CompressionConfig({"prune": {"mlp": 0.25}})):
        assert [(fn, [t.stage for t in ts]) for fn, ts in planned_handlers(config)] == [(handler_of("prune"), ["prune"])]


@pytest.mark.parametrize("score", SCORES)
def test_zero_pruning_is_exact(tiny_vit, tiny_data, score):
    x = tiny_data.val.x[:8]
    ctx = build_ctx(tiny_vit, tiny_data)
    new = prune_vit(tiny_vit, CompressionConfig({"prune": {"score": score}}), ctx)
    assert new is not tiny_vit
    assert torch.equal(_out(new, x), _out(tiny_vit, x))
    assert ctx.notes["heads_kept"] == [[0, 1], [0, 1]]
    assert ctx.notes["mlp_hidden"] == [64, 64]


def test_keep_everything_structure_is_exact(tiny_vit, tiny_data):
    x = tiny_data.val.x[:8]
    new = prune_structure(tiny_vit, [[0, 1], [0, 1]], [list(range(64))] * 2)
    assert torch.equal(_out(new, x), _out(tiny_vit, x))


def test_keep_count_rounds_half_up_and_keeps_one():
    assert keep_count(2, 0.5) == 1
    assert keep_count(3, 0.5) == 1  # 1.5 removed rounds up to 2
    assert keep_count(12, 0.25) == 9
    assert keep_count(2, 0.99) == 1
    assert keep_count(64, 0.99) == 1
    assert keep_count(8, 0.0) == 8


@pytest.mark.parametrize("score", SCORES)
def test_tensors_shrink_and_params_match_dims(tiny_vit, tiny_data, score):
    ctx = build_ctx(tiny_vit, tiny_data)
    cfg = CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.25, "score": score}})
    new = prune_vit(tiny_vit, cfg, ctx)
    dim, heads, head_dim, hidden = 32, 2, 16, 64
    kept_heads, kept_hidden = keep_count(heads, 0.5), keep_count(hidden, 0.25)
    assert (kept_heads, kept_hidden) == (1, 48)
    a = kept_heads * head_dim
    for blk in new.blocks:
        assert blk.attn.num_heads == kept_heads and blk.attn.attn_dim == a and blk.attn.head_dim == head_dim
        assert tuple(blk.attn.qkv.weight.shape) == (3 * a, dim) and tuple(blk.attn.qkv.bias.shape) == (3 * a,)
        assert tuple(blk.attn.proj.weight.shape) == (dim, a)
        assert tuple(blk.mlp.fc1.weight.shape) == (kept_hidden, dim) and tuple(blk.mlp.fc1.bias.shape) == (kept_hidden,)
        assert tuple(blk.mlp.fc2.weight.shape) == (dim, kept_hidden)
    # per block: a removed head takes 3*head_dim qkv rows (+ bias) and head_dim proj columns;
    # a removed unit takes one fc1 row (+ bias) and one fc2 column
    removed_per_block = (heads * head_dim - a) * (3 * dim + 3 + dim) + (hidden - kept_hidden) * (2 * dim + 1)
    assert param_count(new) == param_count(tiny_vit) - 2 * removed_per_block
    assert ctx.notes["mlp_hidden"] == [kept_hidden, kept_hidden]
    assert ctx.notes["prune_score"] == score
    assert all(len(h) == 1 for h in ctx.notes["heads_kept"])
    x = tiny_data.val.x[:4]
    assert _out(new, x).shape == _out(tiny_vit, x).shape == (4, 10)


@pytest.mark.parametrize("score", SCORES)
def test_input_model_not_mutated(tiny_vit, tiny_data, score):
    before = _state_copy(tiny_vit)
    modules = [type(m) for m in tiny_vit.modules()]
    prune_vit(tiny_vit, CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5, "score": score}}), build_ctx(tiny_vit, tiny_data))
    after = tiny_vit.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in tiny_vit.modules()] == modules
    assert tiny_vit.blocks[0].attn.num_heads == 2
    assert all(p.grad is None for p in tiny_vit.parameters())


def _kill(model, block, head, units):
    """Zero all weights of one head and of some MLP units of `block`: every score must rank them last."""
    attn, mlp = model.blocks[block].attn, model.blocks[block].mlp
    h, d = attn.num_heads, attn.head_dim
    rows = [p * h * d + head * d + j for p in range(3) for j in range(d)]
    cols = [head * d + j for j in range(d)]
    with torch.no_grad():
        attn.qkv.weight[rows] = 0
        attn.qkv.bias[rows] = 0
        attn.proj.weight[:, cols] = 0
        mlp.fc1.weight[units] = 0
        mlp.fc1.bias[units] = 0
        mlp.fc2.weight[:, units] = 0


@pytest.mark.parametrize("score", SCORES)
def test_scores_remove_dead_structures(tiny_vit, tiny_data, score):
    dead0, dead1 = list(range(0, 64, 2)), list(range(32, 64))
    _kill(tiny_vit, 0, head=0, units=dead0)
    _kill(tiny_vit, 1, head=1, units=dead1)
    ctx = build_ctx(tiny_vit, tiny_data)
    scores = importance_scores(tiny_vit, score, ctx)
    assert float(scores[0][0][0]) == 0.0 and float(scores[0][0][1]) > 0.0
    assert float(scores[0][1][dead0].abs().max()) == 0.0 and float(scores[0][1][1::2].min()) > 0.0
    new = prune_vit(tiny_vit, CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5, "score": score}}), ctx)
    assert ctx.notes["heads_kept"] == [[1], [0]]
    # removing exactly-dead structures leaves the function unchanged
    x = tiny_data.val.x[:8]
    assert torch.allclose(_out(new, x), _out(tiny_vit, x), atol=1e-5)


@pytest.mark.parametrize("score", SCORES)
def test_deterministic(tiny_vit, tiny_data, score):
    cfg = CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5, "score": score}})
    ctx1, ctx2 = build_ctx(tiny_vit, tiny_data, seed=3), build_ctx(tiny_vit, tiny_data, seed=3)
    a, b = prune_vit(tiny_vit, cfg, ctx1), prune_vit(tiny_vit, cfg, ctx2)
    assert ctx1.notes == ctx2.notes
    x = tiny_data.val.x[:8]
    assert torch.equal(_out(a, x), _out(b, x))


def test_keeps_at_least_one(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data)
    new = prune_vit(tiny_vit, CompressionConfig({"prune": {"heads": 0.9, "mlp": 0.99}}), ctx)
    assert [len(h) for h in ctx.notes["heads_kept"]] == [1, 1]
    assert ctx.notes["mlp_hidden"] == [1, 1]
    assert new.blocks[0].mlp.fc1.out_features == 1
    assert _out(new, tiny_data.val.x[:2]).shape == (2, 10)


def test_calibration_batch_matches_context(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data, seed=5)
    x, y = calibration_batch(ctx, 40)
    assert torch.equal(x, ctx.calibration(40))
    assert len(y) == 40 and y.dtype == torch.int64


@pytest.mark.parametrize("score", SCORES)
def test_deit_distilled(tiny_data, score):
    kwargs = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    torch.manual_seed(0)
    model = create_model(TeacherSpec("deit_tiny_distilled_patch16_224", kwargs))
    ctx = build_ctx(model, tiny_data)
    new = prune_vit(model, CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5, "score": score}}), ctx)
    assert [len(h) for h in ctx.notes["heads_kept"]] == [2, 2]
    assert new.blocks[1].attn.qkv.out_features == 3 * 2 * 8
    x = tiny_data.val.x[:4]
    assert _out(new, x).shape == _out(model, x).shape == (4, 10)


def test_bad_structure_rejected(tiny_vit):
    with pytest.raises(ValueError):
        prune_structure(tiny_vit, [[0, 0], [1]], [list(range(64))] * 2)
    with pytest.raises(ConfigError):
        prune_vit(torch.nn.Linear(4, 4), CompressionConfig({"prune": {"heads": 0.5}}), None)


def test_fewer_macs_at_moderate_size(tiny_data):
    kwargs = dict(img_size=16, patch_size=2, in_chans=1, num_classes=10, embed_dim=192, depth=4, num_heads=4)
    torch.manual_seed(0)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", kwargs))
    x = tiny_data.val.x[:1]
    new = prune_vit(model, CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}}), build_ctx(model, tiny_data))
    before, after = count_macs(model, x), count_macs(new, x)
    # every block matmul (qkv, q@k, attn@v, proj, fc1, fc2) halves; patch embedding and head do not
    assert after < 0.55 * before
    assert param_count(new) < 0.55 * param_count(model)


def test_build_records_and_rebuild(tiny_vit, tiny_data):
    cfg = CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5, "score": "taylor"}})
    result = build(tiny_vit, cfg, tiny_data, seed=1)
    rec = next(r for r in result.records if r["transform"] == "prune")
    assert rec["params_after"] < rec["params_before"]
    assert rec["macs_after"] < rec["macs_before"]
    assert len(rec["heads_kept"]) == 2 and rec["mlp_hidden"] == [32, 32]
    state = {k: v.clone() for k, v in result.float_model.state_dict().items()}
    again = build(tiny_vit, cfg, tiny_data, seed=1, train=False, float_state=state)
    x = tiny_data.val.x[:8]
    assert torch.equal(_out(again.model, x), _out(result.model, x))
