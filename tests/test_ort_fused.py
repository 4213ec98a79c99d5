"""ONNX Runtime with fused attention (quant ort_fused_fp32 / ort_fused_int8): every plain timm attention
becomes one com.microsoft.Attention operator (QAttention in int8), fp32 equals torch, int8 agrees with
float, attention the operator cannot express stays as it was, and a search trains, measures, rebuilds
and exports such trials."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F

from recipes import tiny_recipe
from vitshrink.compress import BuildContext, build, handler_of
from vitshrink.compress.onnx_runtime import OrtModule
from vitshrink.compress.ort_fused import count_fused_attention, fusable, to_fused_ort, with_fused_attention
from vitshrink.compress.quantize import quant_problem
from vitshrink.spaces import CompressionConfig, ConfigError
from vitshrink.techniques import deployment_of


def _ops(model: OrtModule) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(model.model_bytes).graph.node}


def test_fp32_fuses_every_block_and_equals_torch(trained_vit, tiny_data) -> None:
    model = to_fused_ort(trained_vit, "ort_fused_fp32", tiny_data.val.x[:4])
    assert count_fused_attention(model.model_bytes) == len(trained_vit.blocks) == 2
    assert "Softmax" not in _ops(model)  # the attention is inside the operator, not spelled out
    x = tiny_data.val.x[:64]
    with torch.no_grad():
        assert (model(x) - trained_vit(x)).abs().max().item() < 1e-4


def test_int8_quantizes_the_attention_and_agrees_with_float(trained_vit, tiny_data) -> None:
    model = to_fused_ort(trained_vit, "ort_fused_int8", tiny_data.val.x[:4])
    assert "QAttention" in _ops(model) and "Attention" not in _ops(model)
    x, y = tiny_data.val.x, tiny_data.val.y
    with torch.no_grad():
        want, got = trained_vit(x), model(x)
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0).item() > 0.99
    assert abs((got.argmax(1) == y).float().mean().item() - (want.argmax(1) == y).float().mean().item()) < 0.03


def test_pruned_heads_fuse_with_a_narrower_attention(tiny_vit, tiny_data) -> None:
    """Pruning leaves timm Attention with fewer heads than the embedding has: the operator's weight is
    (embed, 3 * kept heads * head dim)."""
    pruned = build(tiny_vit, CompressionConfig({"prune": {"heads": 0.5}}), tiny_data).model
    assert pruned.blocks[0].attn.num_heads == 1
    model = to_fused_ort(pruned, "ort_fused_fp32", tiny_data.val.x[:4])
    assert count_fused_attention(model.model_bytes) == 2
    with torch.no_grad():
        assert (model(tiny_data.val.x[:16]) - pruned(tiny_data.val.x[:16])).abs().max().item() < 1e-4


@pytest.mark.parametrize("config", [CompressionConfig({"nystrom": {"landmarks": 4}}),
                                    CompressionConfig({"tome": {"r": 2}})], ids=["nystrom", "tome"])
def test_attention_the_operator_cannot_express_is_kept_as_it_was(config, tiny_vit, tiny_data) -> None:
    compressed = build(tiny_vit, config, tiny_data).model
    _, fused = with_fused_attention(compressed)
    assert fused == 0 and not any(fusable(b.attn) and type(b).__name__ == "Block" for b in compressed.blocks)
    model = to_fused_ort(compressed, "ort_fused_fp32", tiny_data.val.x[:4])
    with torch.no_grad():
        assert (model(tiny_data.val.x[:16]) - compressed(tiny_data.val.x[:16])).abs().max().item() < 1e-4


def test_the_transform_notes_what_it_fused_and_leaves_its_input_alone(trained_vit, tiny_data) -> None:
    before = {k: v.clone() for k, v in trained_vit.state_dict().items()}
    ctx = BuildContext(data=tiny_data, teacher=trained_vit, seed=0)
    out = handler_of("ort_fused_int8")(trained_vit, CompressionConfig({"ort_fused_int8": {}}), ctx)
    assert isinstance(out, OrtModule) and out.kind == "fused_int8_dynamic"
    assert ctx.notes["fused_attention"] == 2 and ctx.notes["runtime"] == "onnxruntime"
    assert ctx.notes["deployed_bytes"] < ctx.notes["float_bytes"]
    assert all(torch.equal(before[k], v) for k, v in trained_vit.state_dict().items())
    assert type(trained_vit.blocks[0].attn).__name__ == "Attention"


def test_a_cuda_target_is_refused_in_one_sentence() -> None:
    problem = quant_problem("ort_fused_int8", "cuda")
    assert problem.startswith("runtime='ort_fused_int8' runs on the CPU only") and "cpu:N" in problem
    assert quant_problem("ort_fused_int8", "cpu") is None


def test_ort_fused_has_no_calibration_setting() -> None:
    with pytest.raises(ConfigError, match="unknown ort_fused_int8 setting.s. calib_size; ort_fused_int8 takes no settings"):
        CompressionConfig({"ort_fused_int8": {"calib_size": 8}})


@pytest.mark.slow
def test_a_search_over_fused_modes_completes_rebuilds_and_exports(tmp_path) -> None:
    import vitshrink
    from vitshrink.exporting import run_onnx
    from vitshrink.search import run_search
    from vitshrink.spaces import Recipe

    space = 'techniques = ["ort_fused_fp32", "ort_fused_int8"]\nalways = ["quant"]'
    text = tiny_recipe("fused", space, trials=3, sampler="random").replace("[study]\n", "[study]\nscreening = false\n")
    storage = f"sqlite:///{tmp_path}/s.db"
    summary = run_search(Recipe.from_toml_text(text), storage=storage, evaluate_test=False)
    done = [t for t in summary.study.trials if t.state.name == "COMPLETE"]
    modes = {deployment_of(CompressionConfig.from_dict(t.user_attrs["config"])): t.number for t in done}
    assert {"ort_fused_fp32", "ort_fused_int8"} <= set(modes), [t.user_attrs.get("fail_reason") for t in summary.study.trials]
    handle = vitshrink.open_study("fused", storage=storage)
    for mode, number in modes.items():
        loaded = handle.load_trial(number)  # rebuilt from the float weights: the measured outputs again
        x = handle.data.val.x
        with torch.no_grad():  # int8 activations are quantized per batch: the accuracy objective's batches of 256
            logits = torch.cat([loaded.model(x[i:i + 256]) for i in range(0, len(x), 256)])
        assert torch.equal(logits, loaded.val_logits)
        path = handle.export(number, "onnx", tmp_path / f"{mode}.onnx")
        x = handle.data.val.x[:8]
        with torch.no_grad():
            assert torch.allclose(torch.as_tensor(run_onnx(path, x)), loaded.model(x), atol=1e-5)
