"""The search space as data: `CompressionConfig`, `SearchSpace` and recipes."""

import warnings

from ..techniques import selector_choices
from ..techniques.prune import PRUNE_SCORES
from ..techniques.student import STUDENT_INITS
from ._config import CompressionConfig, ConfigError, from_flat
from ._legacy import FlatConfig
from ._fit import ModelShape
from ._recipe import DEFAULT_OBJECTIVES, SAMPLERS, Recipe, builtin_recipes, parse_duration, recipes_dir, resolve_recipe
from ._space import Dimension, SearchSpace

__all__ = [
    "CompressionConfig", "ConfigError", "FlatConfig", "from_flat", "DEFAULT_OBJECTIVES", "Dimension", "ModelShape", "PRUNE_SCORES",
    "STUDENT_INITS", "Recipe", "SAMPLERS", "SearchSpace", "builtin_recipes", "parse_duration", "recipes_dir", "resolve_recipe",
]


_MODES = {"QUANT_MODES": "runtime", "LOWRANK_MODES": "lowrank"}  # the tuples earlier versions exported


def __getattr__(name: str):
    """`QUANT_MODES` and `LOWRANK_MODES`, deprecated: the registered techniques of a choice, read live
    from the registry (a runtime registered later is in them)."""
    if name in _MODES:
        warnings.warn(f"vitshrink.spaces.{name} is deprecated; use vitshrink.techniques.selector_choices()"
                      f"[{_MODES[name]!r}]", DeprecationWarning, stacklevel=2)
        return selector_choices()[_MODES[name]]
    raise AttributeError(f"module 'vitshrink.spaces' has no attribute {name!r}")
