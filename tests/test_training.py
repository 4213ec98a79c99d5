"""The training device and precision (vitshrink.training): where the teacher, students and KD
fine-tunes train, apart from the latency target; bf16 autocast; models back on the CPU in float32;
the same weights for the same seed and device; a GPU asked for and absent refused before training.

GPU paths run where torch sees a GPU (skipped here); benchmarks/gpu_check.py checks a whole search.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import torch

from recipes import tiny_recipe
from support import run_cli
from vitshrink.compress import build
from vitshrink.compress.distill import distill_train, teacher_logits
from vitshrink.models import TrainSettings, _teacher_key, train_classifier
from vitshrink.spaces import CompressionConfig, ConfigError, Recipe
from vitshrink.training import cpu_has_native_bf16, resolve_training

ROOT = Path(__file__).resolve().parents[1]
GPU = torch.cuda.is_available()
FAST = TrainSettings(epochs=1, batch_size=128)


def _recipe(name: str = "tiny", train: str = "") -> str:
    """The tiny recipe with `train` lines added to its [teacher.train] table."""
    return tiny_recipe(name).replace("[teacher.train]\n", f"[teacher.train]\n{train}\n")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fresh(tiny_spec) -> torch.nn.Module:
    from vitshrink.models import create_model

    torch.manual_seed(0)
    return create_model(tiny_spec)


def test_spelling_of_device_and_precision_is_checked():
    for bad, match in (('device = "gpu"', "teacher.train.device = 'gpu' is not a training device"),
                       ('device = "cuda:x"', "use auto, cpu, cuda or cuda:N"),
                       ('precision = "fp16"', "teacher.train.precision = 'fp16' is not a precision; use auto, fp32")):
        with pytest.raises(ConfigError, match=match):
            Recipe.from_toml_text(_recipe(train=bad))
    with pytest.raises(ConfigError, match="is not a precision"):
        TrainSettings(precision="half")
    # a GPU named in a recipe is only checked where training happens (the recipe is read everywhere)
    r = Recipe.from_toml_text(_recipe(train='device = "cuda:1"\nprecision = "bf16"'))
    assert r.teacher_train == {"device": "cuda:1", "precision": "bf16", "epochs": 1}


def test_auto_resolves_to_the_gpu_or_cpu_fp32():
    where = resolve_training("auto", "auto")
    if GPU:
        assert where.device == "cuda:0"
    else:
        # on a CPU "auto" keeps float32: a CPU study means what it meant before precision existed
        assert (where.device, where.precision, where.cache_tag()) == ("cpu", "fp32", None)
    assert resolve_training("cpu", "bf16").cache_tag() == "cpu/bf16"
    assert isinstance(cpu_has_native_bf16(), bool)


@pytest.mark.skipif(GPU, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_sentence_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"device = 'cuda' but torch sees no GPU on this machine; set device"):
        resolve_training("cuda", "auto")
    recipe = tmp_path / "gpu.toml"
    recipe.write_text(_recipe("gpu", 'device = "cuda"'))
    db = tmp_path / "s.db"
    res = run_cli(["search", str(recipe), "--storage", f"sqlite:///{db}"], tmp_path,
                  {"VITSHRINK_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "torch sees no GPU" in lines[-1] and "Traceback" not in res.stderr
    # refused before anything: no teacher trained, no study created
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())
    if db.exists():
        with sqlite3.connect(db) as con:
            tables = {r[0] for r in con.execute("select name from sqlite_master")}
            assert "studies" not in tables or con.execute("select count(*) from studies").fetchone()[0] == 0


def test_cpu_training_is_reproducible_and_comes_back_float32(tiny_spec, tiny_data):
    runs = {}
    for name, settings in {"auto": FAST, "fp32": dataclasses.replace(FAST, device="cpu", precision="fp32"),
                           "bf16": dataclasses.replace(FAST, device="cpu", precision="bf16"),
                           "bf16 again": dataclasses.replace(FAST, device="cpu", precision="bf16")}.items():
        if name == "auto" and GPU:
            continue
        model = train_classifier(_fresh(tiny_spec), tiny_data, settings, seed=3)
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
        runs[name] = _state(model)
    same = lambda a, b: all(torch.equal(runs[a][k], runs[b][k]) for k in runs[a])  # noqa: E731
    assert same("bf16", "bf16 again"), "same seed, same device and precision: the same weights"
    assert not same("fp32", "bf16"), "bf16 autocast really changes the arithmetic"
    if "auto" in runs:
        assert same("auto", "fp32"), "auto on a CPU is float32, bit for bit what training was before"


def test_bf16_autocast_computes_in_bf16_and_keeps_float32_weights(tiny_spec, tiny_data):
    model = _fresh(tiny_spec)
    seen = []
    model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    train_classifier(model, tiny_data, dataclasses.replace(FAST, device="cpu", precision="bf16"))
    assert seen and set(seen) == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    seen.clear()
    train_classifier(model, tiny_data, dataclasses.replace(FAST, device="cpu", precision="fp32"))
    assert set(seen) == {torch.float32}


def test_teacher_cache_key_counts_the_device_only_off_cpu_fp32(tiny_spec, tiny_data):
    plain = _teacher_key(tiny_spec, tiny_data, TrainSettings(device="cpu", precision="fp32"), 0)
    assert plain == _teacher_key(tiny_spec, tiny_data, TrainSettings(device="cpu"), 0)
    assert plain != _teacher_key(tiny_spec, tiny_data, TrainSettings(device="cpu", precision="bf16"), 0)
    if not GPU:  # "auto" on a CPU: the key of a teacher cached before devices existed
        assert plain == _teacher_key(tiny_spec, tiny_data, TrainSettings(), 0)


def test_students_and_finetunes_train_where_the_context_says(tiny_vit, tiny_data):
    cfg = CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 16, "heads": 2, "epochs": 1},
                             "prune": {"heads": 0.5}, "finetune": {"epochs": 1}})
    fp32 = build(tiny_vit, cfg, tiny_data, seed=1, train_device="cpu", train_precision="fp32")
    bf16 = build(tiny_vit, cfg, tiny_data, seed=1, train_device="cpu", train_precision="bf16")
    again = build(tiny_vit, cfg, tiny_data, seed=1, train_device="cpu", train_precision="bf16")
    for result, want in ((fp32, "fp32"), (bf16, "bf16")):
        stages = {r["stage"]: r for r in result.records}
        assert stages["student"]["trained_on"] == {"device": "cpu", "precision": want}
        assert stages["finetune"]["trained_on"] == {"device": "cpu", "precision": want}
        assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert all(torch.equal(a, b) for a, b in zip(bf16.model.state_dict().values(), again.model.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(fp32.model.state_dict().values(), bf16.model.state_dict().values()))


@pytest.mark.skipif(not GPU, reason="needs a GPU")
def test_cuda_training_and_teacher_logits_come_back_to_the_cpu(tiny_spec, tiny_vit, tiny_data):
    settings = dataclasses.replace(FAST, device="cuda", precision="bf16")
    model = train_classifier(_fresh(tiny_spec), tiny_data, settings, seed=3)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float32)}
    again = train_classifier(_fresh(tiny_spec), tiny_data, settings, seed=3)
    diff = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert diff < 1e-3, f"same seed on the same GPU: weights differ by {diff}"
    on_gpu = teacher_logits(tiny_vit, tiny_data, device="cuda")
    on_cpu = teacher_logits(tiny_vit, tiny_data)
    assert on_gpu.device.type == "cpu" and torch.allclose(on_gpu, on_cpu, atol=1e-3)
    assert next(tiny_vit.parameters()).device.type == "cpu", "the shared teacher stays on the CPU"
    loss = distill_train(model, tiny_data, on_gpu, settings, 4.0, 0.7)
    assert loss == loss and next(model.parameters()).device.type == "cpu"
