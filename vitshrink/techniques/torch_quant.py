"""PyTorch runtimes: dynamic int8 quantization of the Linear layers, and bf16 weights and activations.
Chosen by ``quant = "dynamic_int8"`` / ``"bf16"``; the handler is `vitshrink.compress.quantize.quantize`."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Technique, TechniqueConfig, register_technique
from .student import reference_student


@dataclass(frozen=True)
class DynamicInt8Config(TechniqueConfig):
    pass


@dataclass(frozen=True)
class Bf16Config(TechniqueConfig):
    pass


# in the reference set: the teacher and the reference student, each in dynamic int8
_REFERENCES = lambda space: [{"runtime": "dynamic_int8"}, {**reference_student(space), "runtime": "dynamic_int8"}]  # noqa: E731

DYNAMIC_INT8, BF16 = (
    register_technique(Technique(name=mode, stage="quantize", config=config, 
                                 selector=mode, on={"runtime": mode},
                                 references=_REFERENCES if mode == "dynamic_int8" else None))
    for mode, config in (("dynamic_int8", DynamicInt8Config), ("bf16", Bf16Config))
)
