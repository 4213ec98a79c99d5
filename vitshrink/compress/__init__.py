"""Compression transforms, one module per technique, registered by name and applied by `build`
in the order student -> prune -> low-rank -> tokens -> fine-tune (KD) -> quantize."""

from ._build import BuildResult, build, seed_everything
from ._registry import STAGES, BuildContext, get_transform, list_transforms, register_transform

# Importing a technique's module registers its transforms.
from . import distill, lowrank, openvino_runtime, ort_fused, prune, quantize, svd, tokens  # noqa: E402,F401  isort: skip
from ._fit import check_fits, impossible_reason  # noqa: E402  isort: skip

__all__ = [
    "STAGES",
    "BuildContext",
    "BuildResult",
    "build",
    "check_fits",
    "get_transform",
    "impossible_reason",
    "list_transforms",
    "register_transform",
    "seed_everything",
]
