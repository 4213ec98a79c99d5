"""Token reduction: exact when off, tokens fall as planned, ToMe's invariants, Nystrom, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from support import build_ctx

from vitshrink.compress import handler_of, planned_handlers
from vitshrink.compress.lowrank import NystromAttention, nystrom
from vitshrink.compress.tokens import (
    TokenReducedBlocks,
    ToMeBlock,
    bipartite_merge,
    drop_patches,
    reduce_tokens,
    softmax_attend,
    token_plan,
)
from vitshrink.models import TINY_VIT_KWARGS
from vitshrink.spaces import CompressionConfig, ConfigError

torch.set_num_threads(2)



def _tokens_seen(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    """Tokens leaving each block, read with forward hooks."""
    seen: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).shape[1]))
             for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_identity_settings_change_nothing(tiny_vit, tiny_data):
    x = tiny_data.val.x[:8]
    with torch.no_grad():
        ref = tiny_vit(x)
        same = reduce_tokens(tiny_vit, CompressionConfig(), build_ctx(tiny_vit, tiny_data, train=False))
        assert torch.equal(same(x), ref)
        wrapped = reduce_tokens(tiny_vit, CompressionConfig(), build_ctx(tiny_vit, tiny_data, train=False))
        wrapped.blocks = TokenReducedBlocks(*[ToMeBlock(b, r=0, drop=0.0, prefix=1) for b in wrapped.blocks])
        assert torch.equal(wrapped(x), ref)
        # the explicit attention path used once tokens are merged is the same softmax attention
        h = torch.randn(2, 17, 32)
        out, keys, cls = softmax_attend(tiny_vit.blocks[0].attn, h, None, cls_attention=True)
        assert torch.allclose(out, tiny_vit.blocks[0].attn(h), atol=1e-6)
        assert keys.shape == (2, 17, 16) and torch.allclose(cls.sum(-1), torch.ones(2))


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"tome": {"r": 4}}, [13, 9]),
        ({"patch_drop": {"fraction": 0.5, "at": (0,)}}, [9, 9]),
        ({"tome": {"r": 3}, "patch_drop": {"fraction": 0.25, "at": (1,)}}, [14, 8]),
        ({"tome": {"r": 100}}, [9, 5]),  # clamped: at most |B| = half the patches per block
    ],
)
def test_tokens_fall_as_planned(tiny_vit, tiny_data, settings, expected):
    ctx = build_ctx(tiny_vit, tiny_data, train=False)
    model = reduce_tokens(tiny_vit, CompressionConfig(settings), ctx)
    x = tiny_data.val.x[:8]
    assert ctx.notes["tokens_in"] == 17 and ctx.notes["tokens_per_block"] == expected
    assert _tokens_seen(model, x) == expected
    with torch.no_grad():
        assert model(x).shape == (8, 10)


def test_plan_keeps_the_prefix_and_one_patch():
    for n, prefix in [(17, 1), (18, 2), (197, 1)]:
        plan = token_plan(n, prefix, depth=12, r=1000, drop=0.9, drop_at=set(range(12)))
        assert min(plan) >= prefix + 1 and plan == sorted(plan, reverse=True)


def test_merge_conserves_size_and_mass_and_protects_prefix():
    torch.manual_seed(0)
    x, metric = torch.randn(3, 18, 8), torch.randn(3, 18, 4)
    size = torch.randint(1, 4, (3, 18, 1)).float()
    new_x, new_size = bipartite_merge(x, size, metric, r=5, prefix=2)
    assert new_x.shape == (3, 13, 8) and new_size.shape == (3, 13, 1)
    assert torch.equal(new_x[:, :2], x[:, :2]) and torch.equal(new_size[:, :2], size[:, :2])
    assert torch.allclose(new_size.sum(1), size.sum(1))
    assert torch.allclose((new_x * new_size).sum(1), (x * size).sum(1), atol=1e-5)


def test_merge_pairs_the_most_similar_tokens():
    # tokens 1 (set A) and 2 (set B) share a key, everything else is orthogonal: they are merged
    metric = torch.eye(6)[None]
    metric[0, 2] = metric[0, 1]
    x = torch.arange(6.0).reshape(1, 6, 1)
    new_x, new_size = bipartite_merge(x, torch.ones(1, 6, 1), metric, r=1, prefix=1)
    assert new_size[0, :, 0].tolist() == [1, 1, 1, 2, 1]
    assert new_x[0, :, 0].tolist() == [0, 3, 5, 1.5, 4]  # [prefix, unmerged A in order, B]


def test_proportional_attention_equals_attention_over_duplicates(tiny_vit):
    """A token merged from two identical tokens, weighted by size 2, must attend and be attended to
    as the pair did: the paper's reason for adding log(size)."""
    torch.manual_seed(1)
    x = torch.randn(2, 16, 32)
    dup = torch.cat([x, x[:, 5:6]], dim=1)  # token 5 twice
    size = torch.ones(2, 16, 1)
    size[:, 5] = 2
    attn = tiny_vit.blocks[0].attn
    with torch.no_grad():
        full, _, cls_full = softmax_attend(attn, dup, None, True)
        merged, _, cls_merged = softmax_attend(attn, x, size, True)
        assert torch.allclose(full[:, :16], merged, atol=1e-5)
        assert torch.allclose(cls_full[:, 5] + cls_full[:, 16], cls_merged[:, 5], atol=1e-6)
        # Nystrom with m = n is exact, proportional attention included
        nys_dup = NystromAttention.from_attention(attn, landmarks=17).attend(dup)[0]
        nys_merged = NystromAttention.from_attention(attn, landmarks=16).attend(x, size)[0]
        assert torch.allclose(nys_dup[:, :16], nys_merged, atol=1e-4)


def test_drop_keeps_the_most_attended_patches_in_order():
    x = torch.arange(7.0).reshape(1, 7, 1).repeat(2, 1, 1)
    cls_attn = torch.tensor([[0.5, 0.1, 0.3, 0.0, 0.05, 0.02, 0.03], [0.4, 0.0, 0.0, 0.1, 0.2, 0.3, 0.0]])
    kept, size, idx = drop_patches(x, None, cls_attn, keep=3, prefix=1)
    assert size is None
    assert idx.tolist() == [[0, 1, 2, 4], [0, 3, 4, 5]]
    assert kept[..., 0].tolist() == [[0, 1, 2, 4], [0, 3, 4, 5]]


def test_drop_uses_the_blocks_cls_attention(tiny_vit):
    torch.manual_seed(2)
    x = torch.randn(2, 17, 32)
    blk = ToMeBlock(tiny_vit.blocks[0], r=0, drop=0.5, prefix=1)
    with torch.no_grad():
        out, _ = blk(x)
        _, _, cls_attn = softmax_attend(blk.attn, blk.norm1(x), None, True)
    top = cls_attn[:, 1:].topk(8).indices.sort(-1).values + 1
    h = x + blk.attn(blk.norm1(x))
    h = torch.cat([h[:, :1], h.gather(1, top[..., None].expand(-1, -1, 32))], dim=1)
    assert torch.allclose(out, h + blk.mlp(blk.norm2(h)), atol=1e-5)


def test_distilled_model_protects_both_prefix_tokens(tiny_data):
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", **TINY_VIT_KWARGS).eval()
    ctx = build_ctx(deit, tiny_data, train=False)
    model = reduce_tokens(deit, CompressionConfig({"patch_drop": {"fraction": 0.25, "at": (1,)},
                                                   "tome": {"r": 4}}), ctx)
    assert all(b.prefix == 2 for b in model.blocks)
    assert ctx.notes["tokens_per_block"] == token_plan(18, 2, 2, 4, 0.25, {1}) == [14, 7]
    assert _tokens_seen(model, tiny_data.val.x[:4]) == [14, 7]
    with torch.no_grad():
        assert model(tiny_data.val.x[:4]).shape == (4, 10)


def test_average_pooled_model_still_classifies(tiny_data):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", global_pool="avg", **TINY_VIT_KWARGS).eval()
    model = reduce_tokens(vit, CompressionConfig({"tome": {"r": 4}}), build_ctx(vit, tiny_data, train=False))
    with torch.no_grad():
        assert model(tiny_data.val.x[:4]).shape == (4, 10)


def test_works_with_nystrom_attention(tiny_vit, tiny_data):
    x = tiny_data.val.x[:8]
    ctx = build_ctx(tiny_vit, tiny_data, train=False)
    nys = nystrom(tiny_vit, CompressionConfig({"nystrom": {"landmarks": 10, "conv": 3}}), ctx)
    model = reduce_tokens(nys, CompressionConfig({"patch_drop": {"fraction": 0.25, "at": (0,)}, "tome": {"r": 4}}), ctx)
    assert all(isinstance(b.attn, NystromAttention) for b in model.blocks)
    assert ctx.notes["tokens_per_block"] == [9, 5] and ctx.notes["nystrom_exact_blocks"] == [1]
    assert _tokens_seen(model, x) == [9, 5]
    # with m = n the Nystrom model is exact, so under the same merging it matches the softmax one
    exact = nystrom(tiny_vit, CompressionConfig({"nystrom": {"landmarks": 17}}), ctx)
    cfg = CompressionConfig({"tome": {"r": 4}})
    with torch.no_grad():
        got, want = reduce_tokens(exact, cfg, ctx)(x), reduce_tokens(tiny_vit, cfg, ctx)(x)
    assert (got - want).abs().max().item() < 1e-3


def test_input_model_not_mutated(tiny_vit, tiny_data):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    x = tiny_data.val.x[:4]
    with torch.no_grad():
        ref = tiny_vit(x)
    new = reduce_tokens(tiny_vit, CompressionConfig({"patch_drop": {"fraction": 0.3, "at": (0,)}, "tome": {"r": 2}}),
                        build_ctx(tiny_vit, tiny_data, train=False))
    assert isinstance(new.blocks, TokenReducedBlocks) and not isinstance(tiny_vit.blocks, TokenReducedBlocks)
    assert set(new.state_dict()) == set(before), "state_dict keys are those of the original model"
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.state_dict().items())
    with torch.no_grad():
        assert torch.equal(tiny_vit(x), ref)


def test_bad_settings_are_config_errors(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data, train=False)
    with pytest.raises(ConfigError, match="patch_drop.at"):
        reduce_tokens(tiny_vit, CompressionConfig({"patch_drop": {"fraction": 0.5, "at": (7,)}}), ctx)
    torch.manual_seed(0)
    no_cls = timm.create_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", **TINY_VIT_KWARGS)
    with pytest.raises(ConfigError, match="no cls token"):
        reduce_tokens(no_cls, CompressionConfig({"patch_drop": {"fraction": 0.5, "at": (0,)}}), ctx)


def test_registered_in_the_tokens_stage():
    assert planned_handlers(CompressionConfig()) == []
    for config, name in ((CompressionConfig({"tome": {"r": 1}}), "tome"),
                         (CompressionConfig({"patch_drop": {"fraction": 0.1, "at": (0,)}}), "patch_drop")):
        assert [(fn, [(t.name, t.stage) for t in ts]) for fn, ts in planned_handlers(config)] == [
            (reduce_tokens, [(name, "tokens")])]
    assert handler_of("tome") is handler_of("patch_drop") is reduce_tokens


@pytest.mark.parametrize("settings", [{"tome": {"r": 4}}, {"patch_drop": {"fraction": 0.5, "at": (0, 1)}}],
                         ids=["tome", "drop"])
def test_onnx_export_matches_onnxruntime(tiny_vit, tiny_data, tmp_path, settings):
    ort = pytest.importorskip("onnxruntime")
    model = reduce_tokens(tiny_vit, CompressionConfig(settings), build_ctx(tiny_vit, tiny_data, train=False))
    x = tiny_data.val.x[:4]
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4
