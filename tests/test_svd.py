"""Truncated-SVD factorisation: exact at full rank, parameter counts match the ranks, error falls with
rank, MACs countable and lower."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from support import build_ctx
from torch import nn

from vitshrink.compress import build
from vitshrink.compress import handler_of, planned_handlers
from vitshrink.compress.svd import (
    BLOCK_LINEARS,
    LowRankLinear,
    factorise_linear,
    saves_params,
    svd_factorise,
    svd_rank_for,
)
from vitshrink.models import param_count
from vitshrink.objectives.macs import count_macs
from vitshrink.spaces import CompressionConfig, ConfigError

torch.set_num_threads(2)

# tiny ViT: dim 32, mlp hidden 64 -> (out, in) of qkv, proj, fc1, fc2
SHAPES = {"attn.qkv": (96, 32), "attn.proj": (32, 32), "mlp.fc1": (64, 32), "mlp.fc2": (32, 64)}



@torch.no_grad()
def _out(model, x):
    return model.eval()(x)


def test_registered():
    assert [(fn, [t.stage for t in ts]) for fn, ts in planned_handlers(CompressionConfig({"svd": {}}))] == [
        (handler_of("svd"), ["lowrank"])]
    assert planned_handlers(CompressionConfig()) == []
    nystrom = CompressionConfig({"nystrom": {"landmarks": 4}})
    assert [fn for fn, _ in planned_handlers(nystrom)] == [handler_of("nystrom")]


def test_full_rank_setting_is_exact(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data)
    new = svd_factorise(tiny_vit, CompressionConfig({"svd": {}}), ctx)
    assert new is not tiny_vit
    assert not any(isinstance(m, LowRankLinear) for m in new.modules())
    x = tiny_data.val.x[:8]
    assert torch.equal(_out(new, x), _out(tiny_vit, x))
    assert ctx.notes["svd_ranks"] == {} and len(ctx.notes["svd_dense"]) == 2 * len(BLOCK_LINEARS)


def test_forced_full_rank_factorisation_matches(tiny_vit, tiny_data):
    new = copy.deepcopy(tiny_vit)
    for blk in new.blocks:
        for path in BLOCK_LINEARS:
            parent_path, _, attr = path.rpartition(".")
            parent = blk.get_submodule(parent_path)
            layer = getattr(parent, attr)
            low, energy = factorise_linear(layer, min(layer.weight.shape))
            assert energy == pytest.approx(1.0)
            setattr(parent, attr, low)
    assert sum(isinstance(m, LowRankLinear) for m in new.modules()) == 8
    x = tiny_data.val.x[:16]
    assert torch.allclose(_out(new, x), _out(tiny_vit, x), atol=1e-5, rtol=0)


def test_factorise_linear_single_layer():
    torch.manual_seed(0)
    layer = nn.Linear(20, 12)
    x = torch.randn(5, 20)
    full, _ = factorise_linear(layer, 12)
    assert torch.allclose(full(x), layer(x), atol=1e-5)
    assert full.first.bias is None and torch.equal(full.second.bias, layer.bias)
    with torch.no_grad():
        errors = [float((factorise_linear(layer, r)[0](x) - layer(x)).norm()) for r in (2, 6, 10, 12)]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1]
    with pytest.raises(ValueError):
        factorise_linear(layer, 13)


def test_rank_rule():
    assert svd_rank_for(0.3, 10, 20) == 3  # float noise does not push 3.0000000000000004 up to 4
    assert svd_rank_for(0.25, 96, 32) == 8
    assert svd_rank_for(0.01, 96, 32) == 1
    assert svd_rank_for(1.0, 96, 32) == 32
    assert svd_rank_for(0.26, 96, 32) == math.ceil(0.26 * 32)
    assert saves_params(8, 32, 32) and not saves_params(16, 32, 32) and not saves_params(20, 32, 32)


def test_reduced_rank_param_count(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data)
    new = svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.25}}), ctx)
    saved = 0
    for b in range(2):
        for path, (out_f, in_f) in SHAPES.items():
            r = math.ceil(0.25 * min(out_f, in_f))
            layer = new.blocks[b].get_submodule(path)
            assert isinstance(layer, LowRankLinear) and layer.rank == r
            assert tuple(layer.first.weight.shape) == (r, in_f) and tuple(layer.second.weight.shape) == (out_f, r)
            assert ctx.notes["svd_ranks"][f"blocks.{b}.{path}"] == r
            saved += in_f * out_f - r * (in_f + out_f)
    assert param_count(new) == param_count(tiny_vit) - saved
    assert all(0.0 < e < 1.0 for e in ctx.notes["svd_energy"].values())
    x = tiny_data.val.x[:4]
    assert _out(new, x).shape == (4, 10)


def test_only_layers_that_save_are_factorised(tiny_vit, tiny_data):
    # rank 0.6: proj (32x32) at r=20 would cost 1280 > 1024 weights, qkv (96x32) at r=20 costs 2560 < 3072
    ctx = build_ctx(tiny_vit, tiny_data)
    new = svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.6}}), ctx)
    assert isinstance(new.blocks[0].attn.qkv, LowRankLinear)
    assert type(new.blocks[0].attn.proj) is nn.Linear
    assert "blocks.0.attn.proj" in ctx.notes["svd_dense"]
    for name, r in ctx.notes["svd_ranks"].items():
        out_f, in_f = SHAPES[name.split(".", 2)[2]]
        assert saves_params(r, out_f, in_f)


def test_lowrank_blocks_selects(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data)
    new = svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.25, "blocks": (1,)}}), ctx)
    assert not any(isinstance(m, LowRankLinear) for m in new.blocks[0].modules())
    assert all(isinstance(new.blocks[1].get_submodule(p), LowRankLinear) for p in BLOCK_LINEARS)
    assert sorted(ctx.notes["svd_ranks"]) == sorted(f"blocks.1.{p}" for p in BLOCK_LINEARS)
    with pytest.raises(ConfigError, match=r"names block\(s\)"):
        svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.25, "blocks": (2,)}}), ctx)


def test_input_not_mutated(tiny_vit, tiny_data):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.25}}), build_ctx(tiny_vit, tiny_data))
    after = tiny_vit.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, LowRankLinear) for m in tiny_vit.modules())


def test_error_falls_with_rank(tiny_vit, tiny_data):
    x = tiny_data.val.x[:32]
    ref = _out(tiny_vit, x)
    errs = []
    for frac in (0.1, 0.25, 0.4):
        new = svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": frac}}), build_ctx(tiny_vit, tiny_data))
        errs.append(float((_out(new, x) - ref).norm() / ref.norm()))
    assert errs[0] > errs[1] > errs[2]


def test_macs_counted_and_lower(tiny_vit, tiny_data):
    x = tiny_data.val.x[:1]
    new = svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.25}}), build_ctx(tiny_vit, tiny_data))
    before, after = count_macs(tiny_vit, x), count_macs(new, x)
    tokens, depth = 17, 2
    saved = sum(out_f * in_f - math.ceil(0.25 * min(out_f, in_f)) * (in_f + out_f) for out_f, in_f in SHAPES.values())
    assert before - after == depth * tokens * saved  # each saved weight is one MAC per token


def test_build_and_rebuild(tiny_vit, tiny_data):
    cfg = CompressionConfig({"svd": {"rank": 0.25}})
    result = build(tiny_vit, cfg, tiny_data)
    rec = next(r for r in result.records if r["transform"] == "svd")
    assert rec["params_after"] < rec["params_before"] and rec["macs_after"] < rec["macs_before"]
    assert len(rec["svd_ranks"]) == 8
    state = {k: v.clone() for k, v in result.float_model.state_dict().items()}
    again = build(tiny_vit, cfg, tiny_data, train=False, float_state=state)
    x = tiny_data.val.x[:8]
    assert torch.equal(_out(again.model, x), _out(result.model, x))
