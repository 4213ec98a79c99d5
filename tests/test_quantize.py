"""Quantization modes and deployment runtimes: each mode runs and returns float32 logits, int8 agrees
with fp32, deployed int8 is ~4x smaller, ORT fp32 equals torch, quantizing is deterministic and leaves
its input alone, and the ONNX export round-trips through onnxruntime.

Agreement is measured on the tiny ViT *trained* for 300 steps on the tiny digits (random-weight
logits are near zero and say nothing about quantization error); sizes on a wider random ViT
(embed 128, depth 2), where Linear weights dominate as in real ViTs.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from vitshrink.compress import BuildContext, build, handler_of, planned_handlers
from vitshrink.compress.onnx_runtime import OnnxExportError, OrtModule, export_onnx
from vitshrink.compress.quantize import (
    BFloat16Model,
    deployed_size_bytes,
    is_torch_quantized,
    quantize_model,
    runtime_of,
)
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, create_model
from vitshrink.spaces import CompressionConfig

MODES = ("dynamic_int8", "static_int8", "bf16", "ort_fp32", "ort_int8")
INT8_MODES = ("dynamic_int8", "static_int8", "ort_int8")


def _config(mode: str, calib: int = 32) -> CompressionConfig:
    return CompressionConfig({mode: {"calib_size": calib} if mode == "static_int8" else {}})


@pytest.fixture(scope="module")
def quantized(trained_vit, tiny_data) -> dict[str, torch.nn.Module]:
    """Each mode applied once by the registered transform to the trained tiny ViT."""
    ctx = BuildContext(data=tiny_data, teacher=trained_vit, seed=0)
    return {mode: handler_of(mode)(trained_vit, _config(mode), ctx) for mode in MODES}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_registered_as_the_quantize_stage() -> None:
    assert planned_handlers(CompressionConfig()) == []
    for mode in MODES:
        assert [(fn, [(t.name, t.stage) for t in ts]) for fn, ts in planned_handlers(_config(mode))] == [
            (handler_of(mode), [(mode, "quantize")])]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_returns_float32_logits_at_any_batch_size(mode, quantized, tiny_data) -> None:
    model = quantized[mode]
    for n in (1, 7, 64):  # the export example had batch 4: the batch axis must be dynamic
        with torch.inference_mode():
            y = model(tiny_data.val.x[:n])
        assert y.dtype == torch.float32 and y.shape == (n, 10) and torch.isfinite(y).all()
    assert runtime_of(model) == ("onnxruntime" if mode in ("static_int8", "ort_fp32", "ort_int8") else "torch")
    assert isinstance(model, {"bf16": BFloat16Model}.get(mode, torch.nn.Module))


@pytest.mark.parametrize("mode", INT8_MODES + ("bf16",))
def test_low_precision_modes_agree_with_fp32(mode, quantized, trained_vit, tiny_data) -> None:
    x = tiny_data.val.x[:256]
    with torch.inference_mode():
        ref, got = trained_vit(x), quantized[mode](x)
    assert _cosine(got, ref) > 0.99
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() > 0.95


def test_ort_int8_with_calibration_is_static_qdq(trained_vit, tiny_data) -> None:
    ctx = BuildContext(data=tiny_data, teacher=trained_vit, seed=0)
    model = handler_of("ort_int8")(trained_vit, CompressionConfig({"ort_int8": {"calib_size": 16}}), ctx)
    assert isinstance(model, OrtModule) and model.kind == "int8_static_qdq"
    assert ctx.notes["kind"] == "int8_static_qdq" and ctx.notes["calib_size"] == 16
    x = tiny_data.val.x[:128]
    with torch.inference_mode():
        assert _cosine(model(x), trained_vit(x)) > 0.99


def test_ort_fp32_matches_torch(quantized, trained_vit, tiny_data) -> None:
    x = tiny_data.val.x[:64]
    with torch.inference_mode():
        assert (quantized["ort_fp32"](x) - trained_vit(x)).abs().max().item() < 1e-4


def test_transform_notes_what_it_did(trained_vit, tiny_data) -> None:
    ctx = BuildContext(data=tiny_data, teacher=trained_vit, seed=0)
    handler_of("ort_int8")(trained_vit, _config("ort_int8"), ctx)
    notes = ctx.notes
    assert notes["quant"] == "ort_int8" and notes["runtime"] == "onnxruntime" and notes["kind"] == "int8_dynamic"
    assert notes["deployed_bytes"] < notes["float_bytes"] and notes["cosine_vs_float"] > 0.99


def test_deployed_int8_is_about_4x_smaller_on_a_linear_heavy_vit() -> None:
    kwargs = dict(TINY_VIT_KWARGS, embed_dim=128, depth=2, num_heads=4, mlp_ratio=4.0)
    torch.manual_seed(0)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", kwargs)).eval()
    x, calib = torch.randn(2, 1, 16, 16), torch.randn(8, 1, 16, 16)
    fp32 = deployed_size_bytes(model)
    assert fp32 >= 4 * sum(p.numel() for p in model.parameters())  # safetensors of float32 weights
    sizes = {mode: deployed_size_bytes(quantize_model(model, mode, x, calib if mode == "static_int8" else None))
             for mode in MODES}
    for mode in INT8_MODES:
        assert fp32 / sizes[mode] > 3, (mode, fp32, sizes[mode])
    assert 1.9 < fp32 / sizes["bf16"] < 2.1
    assert 0.95 < sizes["ort_fp32"] / fp32 < 1.15  # the same float weights plus the graph


@pytest.mark.parametrize("mode", MODES)
def test_quantize_is_deterministic_and_leaves_its_input_alone(mode, quantized, trained_vit, tiny_data) -> None:
    before = {k: v.clone() for k, v in trained_vit.state_dict().items()}
    again = handler_of(mode)(trained_vit, _config(mode), BuildContext(tiny_data, trained_vit, seed=0))
    x = tiny_data.val.x[:32]
    with torch.inference_mode():
        assert torch.equal(again(x), quantized[mode](x))  # the fixture quantized the same model the same way
    if isinstance(again, OrtModule):
        assert again.model_bytes == quantized[mode].model_bytes
    after = trained_vit.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.dtype == torch.float32 for p in trained_vit.parameters()) and not trained_vit.training
    assert not is_torch_quantized(trained_vit) and type(trained_vit.head) is torch.nn.Linear


def test_build_rebuilds_a_stored_quantized_trial_exactly(tiny_vit, tiny_data) -> None:
    cfg = CompressionConfig({"prune": {"heads": 0.5}, "static_int8": {"calib_size": 16}})
    first = build(tiny_vit, cfg, tiny_data, seed=1)
    rebuilt = build(tiny_vit, cfg, tiny_data, seed=1, train=False, float_state=first.float_model.state_dict())
    x = tiny_data.val.x[:16]
    with torch.inference_mode():
        assert torch.equal(first.model(x), rebuilt.model(x))
    assert first.records[-1]["stage"] == "quantize" and first.records[-1]["runtime"] == "onnxruntime"


def test_ort_module_copies_pickles_and_follows_the_thread_setting(quantized, tiny_data) -> None:
    model = quantized["ort_fp32"]
    x = tiny_data.val.x[:8]
    with torch.inference_mode():
        ref = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(x), ref)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            assert torch.allclose(model(x), ref, atol=1e-6)
        assert model.session().get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(threads)


def test_export_onnx_round_trips_through_onnxruntime(tiny_vit, tmp_path) -> None:
    import onnxruntime as ort

    x = torch.randn(3, 1, 16, 16)
    path = export_onnx(tiny_vit, x[:1], tmp_path / "out" / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        assert (torch.from_numpy(got) - tiny_vit(x)).abs().max().item() < 1e-4
    ort_model = OrtModule(path.read_bytes())
    assert export_onnx(ort_model, x, tmp_path / "again.onnx").read_bytes() == path.read_bytes()
    assert deployed_size_bytes(ort_model) == path.stat().st_size


def test_export_onnx_refuses_a_torch_quantized_model(tiny_vit, tmp_path) -> None:
    with pytest.raises(OnnxExportError, match="float32"):
        export_onnx(quantize_model(tiny_vit, "dynamic_int8", torch.randn(1, 1, 16, 16)), torch.randn(1, 1, 16, 16),
                    tmp_path / "q.onnx")


def test_quantize_model_runs_any_quantization_techniques_handler_and_refuses_an_unknown_mode(tiny_vit, tiny_data) -> None:
    x = tiny_data.val.x[:4]
    fused = quantize_model(tiny_vit, "ort_fused_fp32", x)  # a runtime registered in its own module
    with torch.no_grad():
        assert isinstance(fused, OrtModule) and (fused(x) - tiny_vit(x)).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="unknown quantization mode 'int4'; modes are none, dynamic_int8, bf16, "):
        quantize_model(tiny_vit, "int4", x)
    with pytest.raises(ValueError, match=r"static_int8 needs calibration images \(static_int8.calib_size >= 1\)"):
        quantize_model(tiny_vit, "static_int8", x)
