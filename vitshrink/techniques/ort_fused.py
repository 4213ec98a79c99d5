"""ONNX Runtime with fused attention: each timm attention exported as one ``com.microsoft.Attention``
operator, run in fp32 (``ort_fused_fp32``) or dynamically quantized to int8, attention included
(``ort_fused_int8``: QAttention). Chosen by ``quant``; the handler is
`vitshrink.compress.ort_fused.ort_fused`."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Technique, TechniqueConfig, register_technique


@dataclass(frozen=True)
class OrtFusedFp32Config(TechniqueConfig):
    pass


@dataclass(frozen=True)
class OrtFusedInt8Config(TechniqueConfig):
    pass


ORT_FUSED_FP32 = register_technique(Technique(
    name="ort_fused_fp32", stage="quantize", config=OrtFusedFp32Config, selector="ort_fused_fp32",
    on={"runtime": "ort_fused_fp32"}, identity=(OrtFusedFp32Config(), 1e-5)))  # the same function, fused
ORT_FUSED_INT8 = register_technique(Technique(
    name="ort_fused_int8", stage="quantize", config=OrtFusedInt8Config, selector="ort_fused_int8",
    on={"runtime": "ort_fused_int8"}))
