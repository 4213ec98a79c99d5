"""OpenVINO: the model converted to OpenVINO IR and run in fp32 (``openvino_fp32``), or quantized to
int8 by NNCF post-training quantization on `calib_size` training images (``openvino_int8``). Chosen
by ``quant``; the handler is `vitshrink.compress.openvino_runtime.openvino` (extra: vitshrink[openvino])."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Technique, TechniqueConfig, calibration_images, register_technique


@dataclass(frozen=True)
class OpenvinoFp32Config(TechniqueConfig):
    pass


@dataclass(frozen=True)
class OpenvinoInt8Config(TechniqueConfig):
    calib_size: int = calibration_images()  # training images NNCF calibrates on


OPENVINO_FP32 = register_technique(Technique(
    name="openvino_fp32", stage="quantize", config=OpenvinoFp32Config, 
    selector="openvino_fp32", on={"runtime": "openvino_fp32"},
    identity=(OpenvinoFp32Config(), 1e-5)))  # the same float function in another runtime
OPENVINO_INT8 = register_technique(Technique(
    name="openvino_int8", stage="quantize", config=OpenvinoInt8Config,
    selector="openvino_int8", on={"runtime": "openvino_int8", "openvino_int8.calib_size": 32},
    example=OpenvinoInt8Config(calib_size=16)))
