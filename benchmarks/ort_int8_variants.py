"""Which ONNX Runtime int8 graph of a timm ViT is fastest at batch 1: the graphs one could build to
beat `ort_int8` (issue 16 asks a fused backend for 1.25x over it), side by side in one run.

Variants (all from one timm model with random weights; latency is a property of the structure):
  ort_int8          vitshrink's `ort_int8`: timm's export, dynamic int8 (per tensor) of MatMul/Gemm
  fused_int8        vitshrink's `ort_fused_int8`: attention exported as com.microsoft.Attention, then
                    dynamic int8 (QAttention + int8 MatMuls)
  fused_int8_pc     the same, weights per channel
  fused_int8_u8u8   the same, weights uint8 (the other MLAS kernel)
  fused_opt_int8    ORT's transformer optimizer first (SkipLayerNormalization, BiasGelu fusions), then
                    dynamic int8
  static_qdq        timm's export, static int8 in QDQ form (activations calibrated on 4 random images)
  fused_nbits4/8    fused graph, MatMulNBits weight-only 4 / 8 bits with int8 compute (accuracy_level 4)

Each session runs with 2 intra-op threads and ORT_ENABLE_ALL. Every variant is built first, then
timed round-robin (`--rounds` rounds of `--runs` runs after 5 warm-ups); a row gives its median over
rounds and its speed-up over ort_int8 in each round. The result file records the command and the
load average before and after.

Usage:
    python benchmarks/ort_int8_variants.py --models deit_small_patch16_224,vit_base_patch16_224 \\
        --out benchmarks/results/ort_int8_variants.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.compress.onnx_runtime import onnx_bytes, quantize_onnx_dynamic  # noqa: E402
from vitshrink.compress.ort_fused import fused_onnx_bytes, quantize_fused_dynamic  # noqa: E402


def _dynamic(model: bytes, **kwargs) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(onnx.load_from_string(model), out, op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **kwargs)
        return out.read_bytes()


def _optimized(model: bytes) -> bytes:
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "o.onnx"
        src.write_bytes(model)
        optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0).save_model_to_file(str(dst))
        return dst.read_bytes()


class _Random(CalibrationDataReader):
    def __init__(self, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(0)
        self._it = iter([{"images": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self._it, None)


def _static(model: bytes, shape: tuple[int, ...]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.onnx"
        quantize_static(onnx.load_from_string(model), out, _Random(shape), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"])
        return out.read_bytes()


def _nbits(model: bytes, bits: int) -> bytes:
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=bits)
    quantizer = MatMulNBitsQuantizer(onnx.load_from_string(model), algo_config=config)
    quantizer.process()
    return quantizer.model.model.SerializeToString()


def variants(name: str) -> tuple[dict[str, bytes], np.ndarray]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    plain, fused = onnx_bytes(model, x), fused_onnx_bytes(model, x)
    built = {
        "ort_int8": lambda: quantize_onnx_dynamic(plain),
        "fused_int8": lambda: quantize_fused_dynamic(fused),
        "fused_int8_pc": lambda: _dynamic(fused, weight_type=QuantType.QInt8, per_channel=True),
        "fused_int8_u8u8": lambda: _dynamic(fused, weight_type=QuantType.QUInt8),
        "fused_opt_int8": lambda: _dynamic(_optimized(fused), weight_type=QuantType.QInt8),
        "static_qdq": lambda: _static(plain, tuple(x.shape)),
        "fused_nbits4": lambda: _nbits(fused, 4),
        "fused_nbits8": lambda: _nbits(fused, 8),
    }
    out = {}
    for key, make in built.items():
        try:
            out[key] = make()
        except Exception as exc:  # noqa: BLE001 - a variant this ORT cannot build is reported, not fatal
            print(f"{name} {key}: cannot build ({type(exc).__name__}: {exc})", flush=True)
    return out, x.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit_small_patch16_224,vit_base_patch16_224")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/ort_int8_variants.json")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the quantizers log every tensor they touch
    if os.environ.get("OMP_WAIT_POLICY"):
        sys.exit("unset OMP_WAIT_POLICY: latency is timed with OpenMP's default waits")
    started, load_before, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()[0], time.time()
    rows = []
    for name in args.models.split(","):
        graphs, x = variants(name)
        sessions = {}
        for key, graph in graphs.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[key] = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        feed = {"images": x}
        for s in sessions.values():
            for _ in range(5):
                s.run(None, feed)
        medians: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for key, s in sessions.items():
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    s.run(None, feed)
                    times.append(time.perf_counter() - t)
                medians[key].append(statistics.median(times) * 1000)
        for key, ms in medians.items():
            ratios = [b / a for a, b in zip(ms, medians["ort_int8"])]
            rows.append({"model": name, "variant": key, "latency_ms": round(statistics.median(ms), 3),
                         "round_medians_ms": [round(m, 3) for m in ms],
                         "vs_ort_int8": round(statistics.median(ratios), 3),
                         "vs_ort_int8_per_round": [round(r, 3) for r in ratios]})
            print(f"{name:24s} {key:16s} {statistics.median(ms):8.2f} ms  vs ort_int8 {rows[-1]['vs_ort_int8']:.3f}"
                  f"  {rows[-1]['vs_ort_int8_per_round']}", flush=True)
    result = {"command": "python " + " ".join(sys.argv), "started": started, "seconds": round(time.time() - t0, 1),
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
              "onnxruntime": ort.__version__, "threads": 2, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"load {result['load_before']} -> {result['load_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
