"""ONNX Runtime: the model exported to ONNX and run by ORT in fp32 (``ort_fp32``), dynamic int8
(``ort_int8``) or static int8 calibrated on `calib_size` training images (``static_int8``, QDQ).
Chosen by ``quant``; the handler is `vitshrink.compress.quantize.quantize`.

``ort_int8`` also takes a calib_size (static QDQ) in a hand-written config; a search keeps it
dynamic, so it has no searched setting."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Technique, TechniqueConfig, calibration_images, register_technique


@dataclass(frozen=True)
class StaticInt8Config(TechniqueConfig):
    calib_size: int = calibration_images()  # training images the int8 ranges are calibrated on


@dataclass(frozen=True)
class OrtFp32Config(TechniqueConfig):
    pass


@dataclass(frozen=True)
class OrtInt8Config(TechniqueConfig):
    calib_size: int = calibration_images(needed=False)  # 0: dynamic int8; above 0: static int8 (QDQ) on that many images


STATIC_INT8 = register_technique(Technique(
    name="static_int8", stage="quantize", config=StaticInt8Config,
    selector="static_int8", on={"runtime": "static_int8", "static_int8.calib_size": 32}))
ORT_FP32 = register_technique(Technique(
    name="ort_fp32", stage="quantize", config=OrtFp32Config, 
    selector="ort_fp32", on={"runtime": "ort_fp32"},
    identity=(OrtFp32Config(), 1e-5)))  # the same float function in another runtime
ORT_INT8 = register_technique(Technique(
    name="ort_int8", stage="quantize", config=OrtInt8Config, 
    selector="ort_int8", on={"runtime": "ort_int8"}, accepts=("calib_size",)))
