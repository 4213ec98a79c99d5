"""Quantization and deployment runtimes: the last stage of `build`, chosen as the candidate's runtime; one
handler per mode, registered for its technique (`deploy` notes what each did).

Modes (all take any float `nn.Module` built from Linear/LayerNorm/conv/... and return a new one):

- ``dynamic_int8``: torch eager, every `nn.Linear` swapped for a dynamically quantized one
  (int8 weights, activations quantized per call) via `torch.ao.quantization.quantize_dynamic`.
  torch 2.14 marks it deprecated in favour of torchao's `quantize_`, but torchao's eager int8
  path was ~3x *slower* than fp32 on this CPU (it needs `torch.compile` to be fast), while the
  torch.ao one runs fbgemm/oneDNN int8 kernels: ~2x faster on deit_small at batch 1.
- ``static_int8``: post-training static quantization with ONNX Runtime: the float model is exported
  to ONNX, min/max-calibrated on `calib_size` seeded training images (`ctx.calibration`), and
  written with fused QLinearMatMul operators (int8 per-channel weights, uint8 per-tensor fixed
  activation scales). PT2E (torchao `prepare_pt2e`/`convert_pt2e` + `X86InductorQuantizer`) was
  the alternative: its converted graph runs as float quantize/dequantize ops in eager (no faster
  than fp32, measured), and only becomes int8 kernels after `torch.compile`, which took ~160 s for
  deit_small on 2 cores, per trial, and leaves no plain artifact to deploy. So: ORT.
- ``bf16``: weights and activations in bfloat16 behind a wrapper that casts input and output.
- ``ort_fp32``: the float model exported to ONNX, run by ONNX Runtime (`OrtModule`).
- ``ort_int8``: that ONNX graph dynamically quantized by ONNX Runtime (int8 per-tensor weights);
  with `calib_size > 0` statically quantized instead, in the portable QDQ format.

Only weight matmuls (Linear layers) are quantized; attention's activation-by-activation matmuls and
softmax stay float, which keeps int8 logits within ~1 % (cosine) of float ones.

Example:
    >>> q = quantize_model(model, "dynamic_int8", example)
    >>> deployed_size_bytes(q) < deployed_size_bytes(model)  # ~4x smaller for wide ViTs, less for this tiny one
    True
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import nn

from ..objectives.size import deployed_size_bytes, is_torch_quantized, serialize_deployable
from ..spaces import CompressionConfig
from ..techniques import deployment_of, get_technique, list_techniques
from ..techniques.torch_quant import Bf16Config, DynamicInt8Config
from ..techniques.onnxruntime import OrtFp32Config, OrtInt8Config, StaticInt8Config
from ._registry import BuildContext, Export, handler_of, register_export, register_handler
from .onnx_runtime import OrtModule, onnx_bytes, quantize_onnx_dynamic, quantize_onnx_static



# Modes that only run on the CPU: ONNX Runtime models here are CPU sessions fed numpy arrays (a CUDA
# tensor cannot be), and torch's dynamically quantized Linear has CPU kernels only (fbgemm / oneDNN).
CPU_ONLY_MODES = ("dynamic_int8", "static_int8", "ort_fp32", "ort_int8")


# Checks that runtimes registered elsewhere add (an optional package missing, a device they cannot use).
_QUANT_PROBLEMS: list[Callable[[str, str], str | None]] = []


def register_quant_problem(check: Callable[[str, str], str | None]) -> None:
    """Add `check(mode, target_kind) -> reason or None` to what `quant_problem` asks."""
    _QUANT_PROBLEMS.append(check)


def quant_problem(mode: str, target_kind: str) -> str | None:
    """Why quantization `mode` cannot be measured on a latency target of kind `target_kind`, or None.

    Example:
        >>> quant_problem("ort_int8", "cuda")[:39]
        "runtime='ort_int8' runs on the CPU only"
    """
    if target_kind == "cuda" and mode in CPU_ONLY_MODES:
        return (f"runtime={mode!r} runs on the CPU only (ONNX Runtime CPU sessions, torch int8 CPU kernels) but the "
                "latency target is a CUDA device; search runtime none or bf16 there, or measure on a cpu:N target")
    return next((p for check in _QUANT_PROBLEMS if (p := check(mode, target_kind))), None)


class QuantizationError(RuntimeError):
    """A quantized model that does not run or gives non-finite outputs."""


class BFloat16Model(nn.Module):
    """A model whose weights are bfloat16: casts its float32 input in and its output back to float32.

    Example:
        >>> m = BFloat16Model(copy.deepcopy(model))
        >>> m(x).dtype
        torch.float32
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.bfloat16)).to(torch.float32)


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `nn.Linear` replaced by a dynamically quantized int8 Linear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torch.ao deprecation notice; see the module docstring for why
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear},
                                                      dtype=torch.qint8, inplace=False)


def runtime_of(model: nn.Module) -> str:
    """``onnxruntime`` for an `OrtModule`, ``torch`` otherwise."""
    return "onnxruntime" if isinstance(model, OrtModule) else "torch"


@torch.inference_mode()
def _agreement(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    """Cosine similarity of the flattened logits of `model` and `reference` on `x`; raises if unusable."""
    want = reference(x).float()
    try:
        got = model(x)
    except Exception as exc:  # noqa: BLE001 - re-raised with the mode named, the trial records it
        raise QuantizationError(f"the quantized model does not run ({type(exc).__name__}: {exc}); this model's "
                                "custom modules may not support the mode: try another quant mode") from exc
    if got.dtype != torch.float32 or got.shape != want.shape or not torch.isfinite(got).all():
        raise QuantizationError(f"the quantized model gives {got.dtype} {tuple(got.shape)} outputs "
                                f"(finite: {bool(torch.isfinite(got).all())}), expected float32 {tuple(want.shape)}")
    return float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0))


def quantize_model(model: nn.Module, mode: str, example: torch.Tensor,
                   calibration: torch.Tensor | None = None) -> nn.Module:
    """Return a new model running `model` in quantization mode/runtime `mode`; `model` is left alone.

    The handler of technique `mode` (`vitshrink.compress.handler_of`) applied outside a build, to the
    `example` images and, for a calibrated mode, the `calibration` images given here.

    Args:
        model: a float32 model taking an image batch.
        mode: ``none`` or a quantization technique: ``dynamic_int8``, ``static_int8``, ``bf16``,
            ``ort_fp32``, ``ort_int8``, ``ort_fused_fp32``, ``ort_fused_int8``, ``openvino_fp32``, ``openvino_int8``.
        example: an image batch (for ONNX tracing and the final sanity check).
        calibration: images for static quantization (``static_int8``, ``openvino_int8``; ``ort_int8`` if given).

    Example:
        >>> q = quantize_model(model, "ort_int8", x[:2])
        >>> q(x).shape == model(x).shape
        True
    """
    if mode == "none":
        return copy.deepcopy(model)
    if mode not in list_techniques("quantize"):
        raise ValueError(f"unknown quantization mode {mode!r}; modes are none, {', '.join(list_techniques('quantize'))}")
    takes = hasattr(get_technique(mode).config(), "calib_size")
    calibrated = bool(takes and calibration is not None and len(calibration))
    if mode == "static_int8" and not calibrated:
        raise ValueError("static_int8 needs calibration images (static_int8.calib_size >= 1)")
    config = CompressionConfig({mode: {"calib_size": len(calibration) if calibrated else 0} if takes else {}})
    return handler_of(mode)(model, config, _GivenImages(example, calibration))


class _GivenImages:
    """What a quantization handler reads of a `BuildContext` (example and calibration images), given
    directly: `quantize_model` runs a handler outside a build."""

    def __init__(self, example: torch.Tensor, calibration: torch.Tensor | None) -> None:
        self._example, self._calibration = example, calibration

    def example(self, batch: int = 1) -> torch.Tensor:
        return self._example

    def calibration(self, n: int) -> torch.Tensor:
        return self._calibration[:n]

    def note(self, **facts) -> None:
        pass


def deploy(model: nn.Module, deployed: nn.Module, config: CompressionConfig, ctx: BuildContext, **facts) -> nn.Module:
    """`deployed` (the quantized or converted `model`) after noting what every quantization handler
    notes: runtime, kind, calibration images, deployed bytes before / after and cosine agreement of
    the logits with `model` (which raises `QuantizationError` when the deployed model is unusable);
    `facts` add to or replace the first four."""
    deployed = deployed.eval()
    mode = deployment_of(config)
    notes = {"quant": mode, "runtime": runtime_of(deployed), "kind": getattr(deployed, "kind", mode),
             "calib_size": getattr(config.get(mode), "calib_size", 0)}
    ctx.note(**(notes | facts), float_bytes=deployed_size_bytes(model), deployed_bytes=deployed_size_bytes(deployed),
             cosine_vs_float=round(_agreement(model, deployed, ctx.example(4)), 6))
    return deployed


# How each mode's trials are exported (`vitshrink.exporting`); ORT's graphs are written as measured.
_ORT_FLOAT = "the float32 model (the trial ran the same graph in ONNX Runtime)"
ORT_INT8_EXPORT = Export(refuse={"torchscript": "is quantized by ONNX Runtime and has no TorchScript form; export it with --format onnx"})
register_export("dynamic_int8", Export(
    onnx=quantize_onnx_dynamic, checked_against="deployed",
    onnx_what="ONNX Runtime dynamic int8 quantization (int8 MatMul/Gemm weights) of the trial's float weights; the "
              "trial measured torch's dynamic int8 of the same weights"))
register_export("bf16", Export(
    onnx_what="the float32 model (the trial ran bf16 weights; ONNX Runtime's CPU has no bf16 matmul)"))
register_export("ort_fp32", Export(torchscript=_ORT_FLOAT))
register_export("ort_int8", ORT_INT8_EXPORT)
register_export("static_int8", ORT_INT8_EXPORT)


@register_handler(DynamicInt8Config)
def torch_dynamic_int8(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """torch eager, every Linear dynamically quantized to int8."""
    return deploy(model, quantize_dynamic_int8(model), config, ctx)


@register_handler(Bf16Config)
def torch_bf16(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """torch eager with bfloat16 weights and activations."""
    return deploy(model, BFloat16Model(copy.deepcopy(model)), config, ctx)


@register_handler(OrtFp32Config)
def ort_fp32(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """The float model exported to ONNX and run by ONNX Runtime."""
    return deploy(model, OrtModule(onnx_bytes(model, ctx.example(4)), kind="fp32"), config, ctx)


@register_handler(OrtInt8Config)
def ort_int8(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """ONNX Runtime dynamic int8 of the exported graph; with `calib_size`, static int8 in the QDQ format."""
    graph = onnx_bytes(model, ctx.example(4))
    if calib_size := config["ort_int8"].calib_size:
        deployed = OrtModule(quantize_onnx_static(graph, ctx.calibration(calib_size), qdq=True),
                             kind="int8_static_qdq")
    else:
        deployed = OrtModule(quantize_onnx_dynamic(graph), kind="int8_dynamic")
    return deploy(model, deployed, config, ctx)


@register_handler(StaticInt8Config)
def ort_static_int8(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """ONNX Runtime static int8 (fused QLinear operators) calibrated on `calib_size` training images."""
    graph = onnx_bytes(model, ctx.example(4))
    return deploy(model, OrtModule(quantize_onnx_static(graph, ctx.calibration(config["static_int8"].calib_size)),
                                   kind="int8_static"),
                  config, ctx)


__all__ = [
    "BFloat16Model",
    "CPU_ONLY_MODES",
    "QuantizationError",
    "deploy",
    "deployed_size_bytes",
    "is_torch_quantized",
    "quantize_dynamic_int8",
    "quant_problem",
    "quantize_model",
    "register_quant_problem",
    "runtime_of",
    "serialize_deployable",
]
