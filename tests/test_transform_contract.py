"""One contract every registered technique's handler passes (as Optuna's storage contract tests do):
its identity setting is exact, its active example keeps the output shape, leaves the input model
alone and changes the model (a no-op fails), and the config it reads round-trips through JSON. The
example and the identity come from each technique's record (`vitshrink.techniques`): a new technique
is tested here without editing this file."""

from __future__ import annotations

import copy

import pytest
import torch

from vitshrink.compress import STAGES, BuildContext, build, handled_techniques, handler_of, planned_handlers
from vitshrink.spaces import CompressionConfig
from vitshrink.techniques import get_technique, list_techniques

NEEDS_EXTRA = {"openvino_fp32": "openvino", "openvino_int8": "openvino"}  # vitshrink[openvino] (CI installs it)


def _active(name: str) -> CompressionConfig:
    return CompressionConfig({name: get_technique(name).active_example()})


def test_every_registered_technique_has_a_handler_applied_in_stage_order() -> None:
    assert handled_techniques() == list_techniques()
    order = [get_technique(n).stage for n in list_techniques()]
    assert order == sorted(order, key=STAGES.index)


def test_one_handler_per_config_however_many_of_its_techniques_are_chosen() -> None:
    both = CompressionConfig({"patch_drop": {"fraction": 0.25, "at": (1,)}, "tome": {"r": 2}})
    assert [[t.name for t in ts] for _, ts in planned_handlers(both)] == [["patch_drop", "tome"]]
    assert planned_handlers(CompressionConfig()) == []


@pytest.fixture()
def ctx(request, tiny_data, tiny_vit) -> BuildContext:
    extra = NEEDS_EXTRA.get(getattr(request.node, "callspec", None) and request.node.callspec.params.get("name"))
    if extra:
        pytest.importorskip(extra)
    return BuildContext(data=tiny_data, teacher=tiny_vit, seed=0)


@pytest.mark.parametrize("name", list_techniques())
def test_active_example_keeps_shape_and_leaves_input_alone(name, tiny_vit, ctx) -> None:
    cfg = _active(name)
    assert [t.name for _, ts in planned_handlers(cfg) for t in ts if t.name == name] == [name]  # it is chosen
    assert CompressionConfig.from_json(cfg.to_json()) == cfg
    before = copy.deepcopy(tiny_vit.state_dict())
    x = ctx.example(4)
    out = handler_of(name)(tiny_vit, cfg, ctx)
    assert out is not tiny_vit
    with torch.no_grad():
        y = out.eval()(x)
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    after = tiny_vit.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(tiny_vit.blocks[0].attn).__name__ == "Attention"  # timm's module, not replaced in place


@pytest.mark.parametrize("name", [n for n in list_techniques() if get_technique(n).identity is not None])
def test_identity_setting_is_exact(name, tiny_vit, ctx) -> None:
    settings, tol = get_technique(name).identity_of(tiny_vit)
    x = ctx.example(8)
    with torch.no_grad():
        ref = tiny_vit(x)
        out = handler_of(name)(tiny_vit, CompressionConfig({name: settings}), ctx).eval()(x)
    assert (out - ref).abs().max().item() <= tol


def _structure(model: torch.nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """Module types and parameter / buffer shapes: what a transform that compresses must change."""
    kinds = [(n, type(m).__name__, ()) for n, m in model.named_modules()]
    return kinds + [(n, "tensor", tuple(v.shape)) for n, v in model.state_dict().items() if hasattr(v, "shape")]


@pytest.mark.parametrize("name", list_techniques())
def test_active_example_changes_the_model(name, tiny_vit, ctx) -> None:
    """A handler that returned a copy of its input would pass the tests above; this one it fails: the
    active example must change the structure (modules, shapes) or, for training stages, the outputs."""
    x = ctx.example(8)
    out = handler_of(name)(tiny_vit, _active(name), ctx).eval()
    with torch.no_grad():
        moved = (out(x) - tiny_vit(x)).abs().max().item()
    assert _structure(out) != _structure(tiny_vit) or moved > 1e-4, (name, moved)


def test_a_no_op_transform_fails_the_contract(tiny_vit, ctx) -> None:
    """The check above, applied to a handler that only copies the model, fails."""
    out = copy.deepcopy(tiny_vit).eval()
    x = ctx.example(8)
    with torch.no_grad():
        moved = (out(x) - tiny_vit(x)).abs().max().item()
    assert _structure(out) == _structure(tiny_vit) and moved <= 1e-4


def test_build_applies_stages_in_the_documented_order(tiny_vit, tiny_data) -> None:
    cfg = CompressionConfig({"prune": {"heads": 0.5}, "nystrom": {"landmarks": 4}, "tome": {"r": 2},
                             "finetune": {"epochs": 1}, "dynamic_int8": {}})
    result = build(tiny_vit, cfg, tiny_data, seed=0)
    assert [r["stage"] for r in result.records] == ["prune", "lowrank", "tokens", "finetune", "quantize"]
    prune = result.records[0]
    assert prune["params_after"] < prune["params_before"] and prune["macs_after"] < prune["macs_before"]
    assert all(isinstance(r["seconds"], float) for r in result.records)


def test_build_is_deterministic_and_rebuildable(tiny_vit, tiny_data) -> None:
    cfg = CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.25, "score": "taylor"}, "finetune": {"epochs": 1},
                             "dynamic_int8": {}})
    a = build(tiny_vit, cfg, tiny_data, seed=3)
    b = build(tiny_vit, cfg, tiny_data, seed=3)
    x = tiny_data.val.x[:16]
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    # a stored trial: the same structure without training, the saved float weights, then quantized again
    rebuilt = build(tiny_vit, cfg, tiny_data, seed=3, train=False, float_state=a.float_model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.model(x), a.model(x))
