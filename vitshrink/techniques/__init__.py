"""Compression techniques, one module each: its frozen config, its search dimensions (which exist
only where it is chosen), its checks against the model and its handler, registered by name; and
the block walker every technique that picks blocks goes through.

Adding a technique: one module that registers a `Technique` (its stage, an active example and its
identity setting included; its settings are searched as ``<technique>.<setting>``), its import below
(or any import, from outside the package), its handler registered for its config type in
`vitshrink.compress` (`@register_handler(MyConfig)`), and its tests.

Example:
    >>> list_techniques("lowrank")
    ['nystrom', 'svd']
"""

from ._base import (ABOVE_ZERO, ANY, AT_LEAST_ZERO, FRACTION, SHARED, STAGES, Bounds, Technique, TechniqueConfig,
                    calibration_images, check_kind, chosen_techniques, config_from_dict, config_problem, config_to_dict,
                    deployment_of, get_technique, list_techniques, register_config_type, selector_choices,
                    register_technique, setting, techniques, training_epochs, without_stage)
from ._cost import CostPlan
from . import _keys as keys
from ._walk import at_blocks, block_index, blocks, chosen_indices

# Importing a technique's module registers it; the order is the order of `build`'s stages.
from . import student, prune, nystrom, svd, patch_drop, tome, finetune  # noqa: F401  isort: skip
from . import torch_quant, onnxruntime, ort_fused, openvino  # noqa: F401  isort: skip

from .finetune import DistillConfig  # noqa: E402  the candidate's shared distillation settings

__all__ = ["keys", "ABOVE_ZERO", "ANY", "AT_LEAST_ZERO", "Bounds", "CostPlan", "DistillConfig", "FRACTION", "SHARED",
           "STAGES", "Technique", "TechniqueConfig", "at_blocks", "block_index", "blocks", "calibration_images",
           "check_kind", "chosen_indices", "chosen_techniques", "config_from_dict", "config_problem", "config_to_dict",
           "deployment_of", "get_technique", "list_techniques", "register_config_type", "selector_choices",
           "register_technique", "setting", "techniques", "training_epochs", "without_stage"]
