"""Nystrom attention: exact at m = n, runs below it, exports to ONNX, leaves its input alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from support import build_ctx
from timm.layers import Attention

from vitshrink.compress import handler_of, planned_handlers
from vitshrink.compress.lowrank import (
    NystromAttention,
    exact_pinv_iters,
    iterative_pinv,
    nystrom,
    segment_means,
)
from vitshrink.spaces import CompressionConfig, ConfigError

torch.set_num_threads(2)
TOKENS = 17  # 16 patches of the 16 px tiny ViT + cls



def _cfg(landmarks: int, **kw) -> CompressionConfig:
    return CompressionConfig({"nystrom": {"landmarks": landmarks, **kw}})


def _sharpened(attn: Attention, factor: float) -> Attention:
    """A copy with larger q/k/v weights: peaked attention, a harder test than near-uniform random init."""
    sharp = copy.deepcopy(attn)
    with torch.no_grad():
        sharp.qkv.weight.mul_(factor)
    return sharp


@pytest.mark.parametrize("factor", [1.0, 10.0, 30.0])
def test_landmarks_equal_to_tokens_is_exact_softmax_attention(tiny_vit, factor):
    torch.manual_seed(1)
    x = torch.randn(4, TOKENS, 32)
    for blk in tiny_vit.blocks:
        attn = _sharpened(blk.attn, factor)
        nys = NystromAttention.from_attention(attn, landmarks=TOKENS)
        with torch.no_grad():
            err = (nys(x) - attn(x)).abs().max().item()
        assert err < 1e-3, f"m = n must reproduce softmax attention, max abs error {err}"


def test_whole_model_exact_at_m_equals_tokens(tiny_vit, tiny_data):
    x = tiny_data.val.x[:16]
    new = nystrom(tiny_vit, _cfg(TOKENS), build_ctx(tiny_vit, tiny_data, train=False))
    with torch.no_grad():
        assert (new(x) - tiny_vit(x)).abs().max().item() < 1e-3


@pytest.mark.parametrize("landmarks", [1, 4, 5, 16])  # 5 and 16 do not divide 17
def test_fewer_landmarks_keep_shapes(tiny_vit, landmarks):
    torch.manual_seed(2)
    x = torch.randn(3, TOKENS, 32)
    attn = tiny_vit.blocks[0].attn
    nys = NystromAttention.from_attention(attn, landmarks=landmarks)
    with torch.no_grad():
        out = nys(x)
    assert out.shape == (3, TOKENS, 32) and torch.isfinite(out).all()
    # an approximation of the same attention, not something unrelated
    assert (out - attn(x)).abs().max().item() < 0.1 * attn(x).abs().max().item() + 1e-3


def test_one_landmark_is_attention_to_the_mean_key():
    """With m = 1 the pseudo-inverse of a 1x1 softmax (= 1) is 1 and every token gets the value
    softmax(q_l K^T) V of the mean query: a closed form the module must reproduce."""
    torch.manual_seed(3)
    nys = NystromAttention(dim=8, num_heads=1, landmarks=1).eval()
    x = torch.randn(1, 6, 8)
    q, k, v = nys.qkv(x).chunk(3, dim=-1)
    weights = ((q.mean(1, keepdim=True) * nys.scale) @ k.transpose(1, 2)).softmax(-1)
    expected = nys.proj((weights @ v).expand(1, 6, 8))
    with torch.no_grad():
        assert torch.allclose(nys(x), expected, atol=1e-5)


def test_segment_means_partition_the_tokens():
    for n, m in [(17, 17), (17, 5), (17, 4), (17, 1), (10, 3)]:
        p = segment_means(n, m, torch.float64, torch.device("cpu"))
        assert p.shape == (m, n)
        assert torch.allclose(p.sum(1), torch.ones(m, dtype=torch.float64))
        assert ((p > 0).sum(0) == 1).all(), "every token belongs to exactly one segment"
        lengths = (p > 0).sum(1)
        assert int(lengths.max() - lengths.min()) <= 1
    assert torch.equal(segment_means(17, 17, torch.float32, torch.device("cpu")), torch.eye(17))


def test_iterative_pinv_matches_linalg_pinv():
    torch.manual_seed(4)
    a = torch.softmax(torch.randn(3, 6, 6, dtype=torch.float64) * 2, dim=-1)
    z = iterative_pinv(a, exact_pinv_iters(6))
    assert torch.allclose(z, torch.linalg.pinv(a), atol=1e-6)
    # the paper's 6 steps already give a usable inverse for a well-conditioned matrix
    assert torch.allclose(a @ iterative_pinv(a, 6) @ a, a, atol=1e-2)


def test_model_classifies_and_input_is_not_mutated(tiny_vit, tiny_data):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    x = tiny_data.val.x[:8]
    with torch.no_grad():
        ref = tiny_vit(x)
    ctx = build_ctx(tiny_vit, tiny_data, train=False)
    new = nystrom(tiny_vit, _cfg(4), ctx)
    with torch.no_grad():
        out = new(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert all(isinstance(b.attn, NystromAttention) for b in new.blocks)
    assert all(type(b.attn) is Attention for b in tiny_vit.blocks)
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.state_dict().items())
    with torch.no_grad():
        assert torch.equal(tiny_vit(x), ref)
    assert ctx.notes["landmarks"] == 4 and ctx.notes["blocks"] == [0, 1]


def test_only_the_chosen_blocks_change(tiny_vit, tiny_data):
    ctx = build_ctx(tiny_vit, tiny_data, train=False)
    new = nystrom(tiny_vit, _cfg(6, blocks=(1,)), ctx)
    assert type(new.blocks[0].attn) is Attention and isinstance(new.blocks[1].attn, NystromAttention)
    assert ctx.notes["blocks"] == [1]
    with pytest.raises(ConfigError, match="nystrom.blocks"):
        nystrom(tiny_vit, _cfg(6, blocks=(5,)), ctx)


def test_more_landmarks_than_tokens_is_a_config_error(tiny_vit, tiny_data):
    with pytest.raises(ConfigError, match="landmarks=40 exceeds the 17 tokens of this model; use at most 17"):
        nystrom(tiny_vit, _cfg(40), build_ctx(tiny_vit, tiny_data, train=False))


def test_conv_skip_starts_at_zero_and_learns(tiny_vit, tiny_data):
    x = tiny_data.val.x[:4]
    plain = nystrom(tiny_vit, _cfg(5), build_ctx(tiny_vit, tiny_data, train=False))
    conv = nystrom(tiny_vit, _cfg(5, conv=3), build_ctx(tiny_vit, tiny_data, train=False))
    assert all(b.attn.conv is not None and b.attn.conv.kernel_size == (3, 1) for b in conv.blocks)
    with torch.no_grad():
        assert torch.allclose(conv(x), plain(x), atol=1e-6), "a zero-initialised skip adds nothing"
    conv.train()
    conv(x).logsumexp(-1).sum().backward()
    assert conv.blocks[0].attn.conv.weight.grad.abs().sum() > 0
    even = nystrom(tiny_vit, _cfg(5, conv=4), build_ctx(tiny_vit, tiny_data, train=False))
    with torch.no_grad():
        torch.nn.init.normal_(even.blocks[0].attn.conv.weight, std=0.1)
        out = even(x)
    assert out.shape == (4, 10) and not torch.allclose(out, plain(x), atol=1e-6)


def test_registered_in_the_lowrank_stage():
    assert [(fn, [t.stage for t in ts]) for fn, ts in planned_handlers(_cfg(4))] == [(handler_of("nystrom"), ["lowrank"])]
    assert planned_handlers(CompressionConfig()) == []


def test_onnx_export_matches_onnxruntime(tiny_vit, tiny_data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = nystrom(tiny_vit, _cfg(5, conv=3), build_ctx(tiny_vit, tiny_data, train=False))
    with torch.no_grad():
        for blk in model.blocks:  # a trained-looking skip, so the conv is really exercised
            torch.nn.init.normal_(blk.attn.conv.weight, std=0.1)
    x = tiny_data.val.x[:4]
    path = tmp_path / "nystrom.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4
