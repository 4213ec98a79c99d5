"""The search space as data: `CompressionConfig`, `SearchSpace` and recipes."""

from ..techniques.prune import PRUNE_SCORES
from ..techniques.student import STUDENT_INITS
from ._legacy import FlatConfig
from ._config import LOWRANK_MODES, QUANT_MODES, CompressionConfig, ConfigError, from_flat
from ._fit import ModelShape
from ._recipe import DEFAULT_OBJECTIVES, SAMPLERS, Recipe, builtin_recipes, parse_duration, recipes_dir, resolve_recipe
from ._space import Dimension, SearchSpace

__all__ = [
    "CompressionConfig", "ConfigError", "FlatConfig", "from_flat", "DEFAULT_OBJECTIVES", "Dimension", "LOWRANK_MODES", "ModelShape", "PRUNE_SCORES", "QUANT_MODES",
    "STUDENT_INITS", "Recipe", "SAMPLERS", "SearchSpace", "builtin_recipes", "parse_duration", "recipes_dir", "resolve_recipe",
]
