"""ONNX Runtime with fused attention: each timm attention exported as one ``com.microsoft.Attention``
operator, run in fp32 (``ort_fused_fp32``) or dynamically quantized to int8, attention included
(``ort_fused_int8``: QAttention). Chosen by ``quant``; the handler is
`vitshrink.compress.ort_fused.ort_fused`."""

from __future__ import annotations

from ._base import NoSettings, Technique, register_technique

ORT_FUSED_FP32 = register_technique(Technique(
    name="ort_fused_fp32", stage="quantize", config=NoSettings, fields={}, selector=("quant", "ort_fused_fp32"),
    on={"quant": "ort_fused_fp32"}, identity=({"quant": "ort_fused_fp32"}, 1e-5)))  # the same function, fused
ORT_FUSED_INT8 = register_technique(Technique(
    name="ort_fused_int8", stage="quantize", config=NoSettings, fields={}, selector=("quant", "ort_fused_int8"),
    on={"quant": "ort_fused_int8"}))
