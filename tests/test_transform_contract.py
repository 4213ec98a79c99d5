"""One contract every registered transform passes (as Optuna's storage contract tests do):
its identity setting is exact, its active setting changes the model (a no-op fails), the output
shape is kept, the input model is not mutated, and the config it reads round-trips through JSON."""

from __future__ import annotations

import copy

import pytest
import torch

from vitshrink.compress import STAGES, BuildContext, build, get_transform, list_transforms
from vitshrink.spaces import CompressionConfig

# An active setting of each registered transform, and its identity setting (None: it has none,
# e.g. a student is never the teacher). Nystrom's identity is m = token count (17 for the tiny ViT),
# exact up to the iterative pseudo-inverse, hence its tolerance.
ACTIVE = {
    "student": CompressionConfig(student="custom", student_depth=1, student_embed_dim=32, student_heads=2,
                                 student_epochs=1),
    "prune": CompressionConfig(prune_heads=0.5, prune_mlp=0.5),
    "nystrom": CompressionConfig(lowrank="nystrom", landmarks=4),
    "svd": CompressionConfig(lowrank="svd", svd_rank=0.5),
    "tokens": CompressionConfig(token_merge_r=2, token_drop=0.25, token_drop_at=(1,)),
    "finetune": CompressionConfig(kd_epochs=1),
    "quantize": CompressionConfig(quant="dynamic_int8"),
    "openvino": CompressionConfig(quant="openvino_int8", calib_size=16),
    "ort_fused": CompressionConfig(quant="ort_fused_int8"),
}
IDENTITY = {
    "student": None,
    "prune": (CompressionConfig(prune_heads=0.0, prune_mlp=0.0), 0.0),
    "nystrom": (CompressionConfig(lowrank="nystrom", landmarks=17), 1e-3),
    "svd": (CompressionConfig(lowrank="svd", svd_rank=1.0), 0.0),
    "tokens": (CompressionConfig(token_merge_r=0, token_drop=0.0), 0.0),
    "finetune": (CompressionConfig(kd_epochs=0), 0.0),
    "quantize": (CompressionConfig(quant="none"), 0.0),
    "openvino": (CompressionConfig(quant="openvino_fp32"), 1e-5),  # the same float graph in another runtime
    "ort_fused": (CompressionConfig(quant="ort_fused_fp32"), 1e-5),  # the same function, attention fused
}


def test_every_registered_transform_is_covered() -> None:
    assert set(list_transforms()) == set(ACTIVE)
    order = [get_transform(n).stage for n in list_transforms()]
    assert order == sorted(order, key=STAGES.index)


@pytest.fixture()
def ctx(request, tiny_data, tiny_vit) -> BuildContext:
    if getattr(request.node, "callspec", None) and request.node.callspec.params.get("name") == "openvino":
        pytest.importorskip("openvino")  # the optional extra vitshrink[openvino] (CI installs it)
    return BuildContext(data=tiny_data, teacher=tiny_vit, seed=0)


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_active_setting_keeps_shape_and_leaves_input_alone(name, tiny_vit, ctx) -> None:
    t = get_transform(name)
    cfg = ACTIVE[name]
    assert t.is_active(cfg)
    assert CompressionConfig.from_json(cfg.to_json()) == cfg
    before = copy.deepcopy(tiny_vit.state_dict())
    x = ctx.example(4)
    out = t.fn(tiny_vit, cfg, ctx)
    assert out is not tiny_vit
    with torch.no_grad():
        y = out.eval()(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    after = tiny_vit.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(tiny_vit.blocks[0].attn).__name__ == "Attention"  # timm's module, not replaced in place


@pytest.mark.parametrize("name", sorted(n for n, v in IDENTITY.items() if v is not None))
def test_identity_setting_is_exact(name, tiny_vit, ctx) -> None:
    cfg, tol = IDENTITY[name]
    t = get_transform(name)
    x = ctx.example(8)
    with torch.no_grad():
        ref = tiny_vit(x)
        out = t.fn(tiny_vit, cfg, ctx).eval()(x)
    assert (out - ref).abs().max().item() <= tol


def _structure(model: torch.nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """Module types and parameter / buffer shapes: what a transform that compresses must change."""
    kinds = [(n, type(m).__name__, ()) for n, m in model.named_modules()]
    return kinds + [(n, "tensor", tuple(v.shape)) for n, v in model.state_dict().items() if hasattr(v, "shape")]


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_active_setting_changes_the_model(name, tiny_vit, ctx) -> None:
    """A transform that returned a copy of its input would pass the tests above; this one it fails:
    the active setting must change the structure (modules, shapes) or, for training stages, the outputs."""
    t = get_transform(name)
    x = ctx.example(8)
    out = t.fn(tiny_vit, ACTIVE[name], ctx).eval()
    with torch.no_grad():
        moved = (out(x) - tiny_vit(x)).abs().max().item()
    assert _structure(out) != _structure(tiny_vit) or moved > 1e-4, (name, moved)


def test_a_no_op_transform_fails_the_contract(tiny_vit, ctx) -> None:
    """The check above, applied to a transform that only copies the model, fails."""
    out = copy.deepcopy(tiny_vit).eval()
    x = ctx.example(8)
    with torch.no_grad():
        moved = (out(x) - tiny_vit(x)).abs().max().item()
    assert _structure(out) == _structure(tiny_vit) and moved <= 1e-4


def test_build_applies_stages_in_the_documented_order(tiny_vit, tiny_data) -> None:
    cfg = CompressionConfig(prune_heads=0.5, lowrank="nystrom", landmarks=4, token_merge_r=2, kd_epochs=1,
                            quant="dynamic_int8")
    result = build(tiny_vit, cfg, tiny_data, seed=0)
    assert [r["stage"] for r in result.records] == ["prune", "lowrank", "tokens", "finetune", "quantize"]
    prune = result.records[0]
    assert prune["params_after"] < prune["params_before"] and prune["macs_after"] < prune["macs_before"]
    assert all(isinstance(r["seconds"], float) for r in result.records)


def test_build_is_deterministic_and_rebuildable(tiny_vit, tiny_data) -> None:
    cfg = CompressionConfig(prune_heads=0.5, prune_mlp=0.25, prune_score="taylor", kd_epochs=1, quant="dynamic_int8")
    a = build(tiny_vit, cfg, tiny_data, seed=3)
    b = build(tiny_vit, cfg, tiny_data, seed=3)
    x = tiny_data.val.x[:16]
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    # a stored trial: the same structure without training, the saved float weights, then quantized again
    rebuilt = build(tiny_vit, cfg, tiny_data, seed=3, train=False, float_state=a.float_model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.model(x), a.model(x))
