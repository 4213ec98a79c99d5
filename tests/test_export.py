"""Exports of stored trials: ONNX runs in ONNX Runtime and matches torch, TorchScript reloads and
matches, safetensors reloads into the rebuilt architecture, every export has its model card.

The trials come from the session's shared study (see test_studies.py): the teacher, pruning +
torch dynamic int8, Nystrom + ToMe token merging, and ONNX Runtime int8.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_studies import cli, shared_study

from vitshrink.exporting import ExportError, card_path, run_onnx

torch.set_num_threads(2)

CARD_KEYS = {"study", "trial", "format", "config", "objectives", "latency", "test_accuracy", "teacher_accuracy",
             "target", "input", "output", "exported_model", "check", "versions"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def handle(shared):
    from vitshrink.studies import open_study

    return open_study(shared.name, shared.storage)


@pytest.fixture(scope="module")
def x(handle) -> torch.Tensor:
    return handle.data.test.x[:32]  # images the export check (val) did not use


def _logits(model, x):
    with torch.no_grad():
        return model(x).float()


@pytest.mark.parametrize("key", ["teacher", "prune_dyn", "nys_tokens", "ort_int8"])
def test_onnx_export_runs_in_onnxruntime_and_matches(handle, shared, x, key, tmp_path) -> None:
    n = shared.numbers[key]
    path = handle.export(n, "onnx", tmp_path / f"{key}.onnx")
    got = run_onnx(path, x)
    model = handle.load_model(n)
    want = _logits(model, x)
    assert got.shape == want.shape == (32, 10)
    if key in ("teacher", "nys_tokens", "ort_int8"):  # float graphs, or the very graph the trial measured
        assert torch.allclose(got, want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=1e-4)
    else:  # ORT's int8 of the same weights vs torch's int8: close, not equal
        cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
        assert float(cos.mean()) > 0.99
        assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.9
    # any batch size runs (dynamic batch axis), not only the traced one
    assert run_onnx(path, x[:3]).shape == (3, 10)
    card = json.loads(card_path(path).read_text())
    assert CARD_KEYS <= set(card)
    assert card["trial"] == n and card["format"] == "onnx"
    assert card["config"] == handle.study.trials[n].user_attrs["config"]
    assert card["objectives"]["accuracy"] == handle.study.trials[n].values[0]
    assert card["latency"]["iqr_ms"] >= 0 and card["target"]["target"] == "cpu:2"
    assert card["versions"]["onnxruntime"] and card["versions"]["torch"] and card["versions"]["vitshrink"]


@pytest.mark.parametrize("key", ["teacher", "prune_dyn", "nys_tokens"])
def test_torchscript_export_reloads_and_matches(handle, shared, x, key, tmp_path) -> None:
    n = shared.numbers[key]
    path = handle.export(n, "torchscript", tmp_path / f"{key}.pt")
    loaded = torch.jit.load(str(path))
    want = _logits(handle.load_model(n), x)
    assert torch.allclose(_logits(loaded, x), want, atol=1e-5, rtol=1e-5)
    assert json.loads(card_path(path).read_text())["format"] == "torchscript"


def test_torchscript_refuses_an_onnxruntime_int8_trial(handle, shared, tmp_path) -> None:
    path = tmp_path / "m.pt"
    with pytest.raises(ExportError, match="no TorchScript form; export it with --format onnx"):
        handle.export(shared.numbers["ort_int8"], "torchscript", path)
    assert not path.exists() and not card_path(path).exists()


def test_safetensors_export_reloads(handle, shared, x, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vitshrink.spaces import CompressionConfig

    n = shared.numbers["prune_dyn"]
    path = handle.export(n, "safetensors", tmp_path / "m.safetensors")
    state, config = handle.float_weights(n)
    loaded = load_file(str(path))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(path), framework="pt") as f:
        assert CompressionConfig.from_json(f.metadata()["config"]) == config
    doc = json.loads((tmp_path / "m.config.json").read_text())
    assert CompressionConfig.from_dict(doc["config"]) == config and doc["input_shape"] == [1, 8, 8]
    model = handle.load_float_model(n)  # the pruned architecture the config builds ...
    model.load_state_dict(loaded)  # ... takes the exported weights as they are
    assert _logits(model, x).shape == (32, 10)
    assert json.loads(card_path(path).read_text())["check"]["max_abs_diff"] == 0.0


def test_unknown_format_is_refused(handle, shared, tmp_path) -> None:
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        handle.export(shared.numbers["teacher"], "tflite", tmp_path / "m.tflite")


@pytest.mark.slow
def test_cli_export(shared, tmp_path) -> None:
    out = tmp_path / "deep" / "m.onnx"
    res = cli("export", "q", "--trial", str(shared.numbers["nys_tokens"]), "--format", "onnx", "--out", str(out),
              "--storage", shared.storage)
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000 and card_path(out).exists()
    res = cli("export", "q", "--trial", str(shared.numbers["teacher"]), "--format", "tflite", "--out",
              str(tmp_path / "m.tflite"), "--storage", shared.storage)
    assert res.exit_code == 2 and "unknown export format" in res.output
    res = cli("export", "nope", "--trial", "0", "--out", str(tmp_path / "m.onnx"), "--storage", shared.storage)
    assert res.exit_code == 2 and "no study 'nope'" in res.output
