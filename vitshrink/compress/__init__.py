"""Compression handlers, one module per technique (or family), each registered for the techniques it
applies and called by `build` in the order student -> prune -> low-rank -> tokens -> fine-tune (KD)
-> quantize."""

from ._build import BuildResult, build, seed_everything
from ..techniques import STAGES
from ._registry import (BuildContext, Export, Handler, export_of, handled_techniques, handler_of, planned_handlers,
                        register_export, register_handler)

# Importing a technique's module registers its handlers.
from . import distill, lowrank, openvino_runtime, ort_fused, prune, quantize, svd, tokens  # noqa: E402,F401  isort: skip
from ._fit import check_fits, impossible_reason  # noqa: E402  isort: skip

__all__ = [
    "STAGES",
    "BuildContext",
    "Export",
    "export_of",
    "register_export",
    "BuildResult",
    "build",
    "check_fits",
    "Handler",
    "impossible_reason",
    "handled_techniques",
    "handler_of",
    "planned_handlers",
    "register_handler",
    "seed_everything",
]
