"""OpenVINO: the model converted to OpenVINO IR and run in fp32 (``openvino_fp32``), or quantized to
int8 by NNCF post-training quantization on `calib_size` training images (``openvino_int8``). Chosen
by ``quant``; the handler is `vitshrink.compress.openvino_runtime.openvino` (extra: vitshrink[openvino])."""

from __future__ import annotations

from ._base import CalibratedConfig, NoSettings, Technique, register_technique

OPENVINO_FP32 = register_technique(Technique(
    name="openvino_fp32", stage="quantize", config=NoSettings, fields={},
    selector=("quant", "openvino_fp32"), on={"quant": "openvino_fp32"},
    identity=({"quant": "openvino_fp32"}, 1e-5)))  # the same float function in another runtime
OPENVINO_INT8 = register_technique(Technique(
    name="openvino_int8", stage="quantize", config=CalibratedConfig, fields={"calib_size": "calib_size"},
    selector=("quant", "openvino_int8"), on={"quant": "openvino_int8", "calib_size": 32},
    example={"quant": "openvino_int8", "calib_size": 16}))
