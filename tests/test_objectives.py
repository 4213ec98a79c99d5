"""Objectives: accuracy, the latency protocol (targets, lock, signature, cache), size, memory."""

from __future__ import annotations

import copy
import multiprocessing as mp

import pytest
import torch
from torch import nn

from vitshrink.data import Split
from vitshrink.objectives import (
    LatencyCache,
    LatencyProtocol,
    NonFiniteOutput,
    Target,
    accuracy,
    measure_latency,
    measure_latency_cached,
    param_count,
    peak_memory_bytes,
    safetensors_size_bytes,
    size_bytes,
    structural_signature,
)
from vitshrink.objectives import latency as latency_mod

torch.set_num_threads(2)

SHAPE = (1, 16, 16)  # the tiny ViT takes 1x16x16 digits
FAST = LatencyProtocol(warmup=1, runs=5)


# --- targets and protocol -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["cpu:2", "cpu:1", "cuda:0", "cuda:3", "ray:vitshrink_target", "ray:gpu_box:4"])
def test_target_parse_round_trip(text):
    target = Target.parse(text)
    assert target.spec() == text
    assert Target.parse(str(target)) == target


def test_target_parse_fields():
    assert Target.parse("cpu:2").threads == 2 and Target.parse("cpu:2").kind == "cpu"
    assert Target.parse("cuda:1").device == 1
    ray = Target.parse("ray:vitshrink_target")
    assert (ray.kind, ray.ray_resource) == ("ray", "vitshrink_target")
    assert Target.parse("cpu").threads >= 1


@pytest.mark.parametrize("bad", ["", "tpu:0", "cpu:two", "cpu:0", "cuda:-1", "ray", "ray:", "cpu:2:3", "cuda:x"])
def test_target_parse_rejects_bad_strings(bad):
    with pytest.raises(ValueError, match="target"):
        Target.parse(bad)


def test_target_describe_names_cpu_and_torch():
    info = Target.parse("cpu:2").describe()
    assert info["cpu"] and info["torch"] == torch.__version__ and info["target"] == "cpu:2"


@pytest.mark.parametrize(
    "kwargs", [{"runs": 4}, {"warmup": -1}, {"batch_sizes": ()}, {"batch_sizes": (0,)}, {"threads": 0},
               {"throughput_batch": 0}],
)
def test_protocol_validation(kwargs):
    with pytest.raises(ValueError):
        LatencyProtocol(**kwargs)


def test_protocol_batches_and_threads():
    p = LatencyProtocol(batch_sizes=(1, 2), throughput_batch=8)
    assert p.all_batches == (1, 2, 8)
    assert p.threads_for(Target("cpu", 3)) == 3
    assert LatencyProtocol(threads=1).threads_for(Target("cpu", 3)) == 1


# --- measurement ----------------------------------------------------------------------------------


def test_measure_latency_positive_medians(tiny_vit):
    torch.set_num_threads(1)
    protocol = LatencyProtocol(warmup=1, runs=6, throughput_batch=4, max_runs=6)  # a fixed count
    result = measure_latency(tiny_vit, SHAPE, Target("cpu", 2), protocol)
    assert [b.batch for b in result.batches] == [1, 4]
    for b in result.batches:
        assert b.runs == 6 and b.median_ms > 0 and b.min_ms <= b.median_ms and b.iqr_ms >= 0 and b.cv >= 0
    assert result.throughput == pytest.approx(4 * 1000 / result.batch(4).median_ms)
    assert result.threads == 2 and torch.get_num_threads() == 1  # set for the run, restored afterwards
    assert result.finished_at >= result.started_at > 0 and result.load_avg >= 0
    torch.set_num_threads(2)


def test_measure_latency_restores_training_mode(tiny_vit):
    tiny_vit.train()
    measure_latency(tiny_vit, SHAPE, Target("cpu", 2), FAST)
    assert tiny_vit.training


def test_cuda_target_without_cuda_is_a_clear_error(tiny_vit):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(latency_mod.LatencyError, match="CUDA"):
        measure_latency(tiny_vit, SHAPE, Target.parse("cuda:0"), FAST)


# --- structural signature and cache -------------------------------------------------------------


def _shrunk_mlp(model: nn.Module) -> nn.Module:
    """The tiny ViT with half the MLP hidden units of block 0 really removed (a pruned structure)."""
    m = copy.deepcopy(model)
    mlp = m.blocks[0].mlp
    hidden = mlp.fc1.out_features // 2
    fc1, fc2 = nn.Linear(mlp.fc1.in_features, hidden), nn.Linear(hidden, mlp.fc2.out_features)
    mlp.fc1, mlp.fc2 = fc1, fc2
    return m


def test_signature_ignores_weights_but_not_structure(tiny_vit):
    target, proto = Target("cpu", 2), FAST
    other = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    sig = structural_signature(tiny_vit, SHAPE, target, proto)
    assert structural_signature(other, SHAPE, target, proto) == sig
    assert structural_signature(_shrunk_mlp(tiny_vit), SHAPE, target, proto) != sig
    assert structural_signature(tiny_vit, SHAPE, target, LatencyProtocol(warmup=1, runs=5, batch_sizes=(2,))) != sig
    assert structural_signature(tiny_vit, SHAPE, Target("cpu", 1), proto) != sig
    assert structural_signature(tiny_vit, SHAPE, target, proto, extra={"quant": "bf16"}) != sig
    fewer_heads = copy.deepcopy(tiny_vit)
    fewer_heads.blocks[1].attn.num_heads = 1  # same tensor shapes, different attention structure
    assert structural_signature(fewer_heads, SHAPE, target, proto) != sig
    bf16 = copy.deepcopy(tiny_vit).to(torch.bfloat16)
    assert structural_signature(bf16, SHAPE, target, proto) != sig


def test_cache_hit_does_not_measure_again(tiny_vit, monkeypatch):
    cache = LatencyCache()
    first, cached = measure_latency_cached(tiny_vit, SHAPE, Target("cpu", 2), FAST, extra={"t": "hit"}, cache=cache)
    assert not cached
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return latency_mod.LatencyResult((), None, 0)

    monkeypatch.setattr(latency_mod, "measure_latency", counting)
    other_weights = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        other_weights.head.weight.add_(1.0)
    again, cached = measure_latency_cached(other_weights, SHAPE, Target("cpu", 2), FAST, extra={"t": "hit"}, cache=cache)
    assert cached and calls == [] and again == first
    _, cached = measure_latency_cached(_shrunk_mlp(tiny_vit), SHAPE, Target("cpu", 2), FAST, extra={"t": "hit"},
                                       cache=cache)
    assert not cached and len(calls) == 1  # a new structure is measured
    assert LatencyCache(cache.path).get(structural_signature(tiny_vit, SHAPE, Target("cpu", 2), FAST, {"t": "hit"}))


def test_cache_survives_a_damaged_file(tmp_path):
    path = tmp_path / "latency-cache.json"
    path.write_text("{not json")
    cache = LatencyCache(path)
    assert cache.get("x") is None
    cache.put("x", latency_mod.LatencyResult((latency_mod.BatchLatency(1, 1.0, 0.1, 0.1, 0.9, 5),), None, 2))
    assert LatencyCache(path).get("x").median_ms == 1.0


def _measure_in_child(cache_dir: str, barrier, queue) -> None:
    import os

    os.environ["VITSHRINK_CACHE"] = cache_dir
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.GELU(), nn.Linear(512, 512))
    barrier.wait(timeout=120)  # both start measuring together: without the lock they would overlap
    result = measure_latency(model, (3, 32, 32), Target("cpu", 1), LatencyProtocol(warmup=2, runs=80))
    queue.put((result.started_at, result.finished_at))


def test_two_processes_never_measure_at_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_measure_in_child, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    intervals = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (s1, e1), (s2, e2) = intervals
    assert e1 > s1 and e2 > s2
    assert e1 <= s2, f"measurements overlapped: {intervals}"


# --- size, memory, accuracy ---------------------------------------------------------------------


def test_size_of_fp32_model_is_its_safetensors_bytes(tiny_vit):
    from safetensors.torch import save

    expected = len(save({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}))
    assert safetensors_size_bytes(tiny_vit) == expected
    assert size_bytes(tiny_vit) == expected
    assert expected > 4 * sum(p.numel() for p in tiny_vit.parameters())


def test_param_count_counts_quantized_weights(tiny_vit):
    n = param_count(tiny_vit)
    assert n == sum(p.numel() for p in tiny_vit.parameters())
    with pytest.warns(Warning):
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(tiny_vit), {nn.Linear}, dtype=torch.qint8)
    assert param_count(q) == n


class _Allocates(nn.Module):
    """Allocates a 64 MiB temporary in its forward."""

    def forward(self, x):
        big = torch.ones(16 * 1024 * 1024)
        return x + big[:1]


def test_peak_memory_sees_a_temporary():
    peak = peak_memory_bytes(_Allocates(), torch.zeros(1))
    assert 60 * 2**20 <= peak <= 200 * 2**20
    assert peak_memory_bytes(nn.Identity(), torch.zeros(1)) < 16 * 2**20


class _Oracle(nn.Module):
    """Looks the label up from the image's first pixel: a perfect classifier to test accuracy with."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


def test_accuracy_of_a_perfect_model_is_one():
    y = torch.arange(10).repeat(7)
    x = torch.zeros(len(y), 1, 2, 2)
    x[:, 0, 0, 0] = y.float()
    result = accuracy(_Oracle(), Split(x, y), batch_size=16)
    assert result.accuracy == 1.0
    assert result.logits.shape == (70, 10) and result.logits.dtype == torch.float32
    wrong = accuracy(_Oracle(), Split(x, (y + 1) % 10))
    assert wrong.accuracy == 0.0


def test_accuracy_rejects_nan(tiny_vit, tiny_data):
    broken = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteOutput, match="NaN"):
        accuracy(broken, tiny_data.val.head(8))


def test_accuracy_of_tiny_vit_in_range(tiny_vit, tiny_data):
    tiny_vit.train()
    result = accuracy(tiny_vit, tiny_data.val, batch_size=64)
    assert 0.0 <= result.accuracy <= 1.0 and result.n == len(tiny_data.val)
    assert tiny_vit.training


def test_signature_of_onnx_runtime_models_follows_the_graph_not_the_weights(tiny_vit):
    from vitshrink.compress.quantize import quantize_model

    x = torch.randn(2, *SHAPE)
    other = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()  # no longer equal-valued biases: the exporter's shared initializers differ
    target = Target("cpu", 2)
    sig = structural_signature(quantize_model(tiny_vit, "ort_int8", x), SHAPE, target, FAST)
    assert structural_signature(quantize_model(other, "ort_int8", x), SHAPE, target, FAST) == sig
    assert structural_signature(quantize_model(_shrunk_mlp(tiny_vit), "ort_int8", x), SHAPE, target, FAST) != sig
