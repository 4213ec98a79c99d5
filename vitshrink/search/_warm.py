"""The trials every new study opens with: the teacher, and with ``seed_with = "reference"`` the
hand-picked reference set. The driver enqueues them; every executor seeds its sampler past them.

Example:
    >>> from vitshrink.spaces import resolve_recipe
    >>> [role for role, _ in warm_start_configs(resolve_recipe("quickstart"))][0]
    'teacher'
"""

from __future__ import annotations

import optuna

from ..spaces import CompressionConfig, Recipe, SearchSpace
from ..techniques import techniques
from ._schema import CONFIG_OVERRIDE_ATTR, ROLE_ATTR


def reference_configs(space: SearchSpace) -> list[CompressionConfig]:
    """The reference study's hand-picked set: each technique's reference configs (`Technique.references`),
    in the order `build` applies them: a small student; 30 % and 50 % pruning; Nystrom with two
    landmark counts; dynamic int8 of the teacher and of the student."""
    return [space.config_of(values) for t in techniques() if t.references for values in t.references(space)]


def warm_start_configs(recipe: Recipe) -> list[tuple[str, CompressionConfig]]:
    """(role, config) of the trials every new study of `recipe` opens with: the teacher, then the
    hand-picked reference set when `seed_with = "reference"`."""
    warm = [("teacher", CompressionConfig())]
    if recipe.seed_with == "reference":
        warm += [("reference", cfg) for cfg in reference_configs(recipe.space)]
    return warm


def enqueue_warm_starts(study: optuna.Study, recipe: Recipe) -> None:
    """The teacher is the first trial of every study; `seed_with = "reference"` adds the hand-picked set."""
    if study.get_trials(deepcopy=False):
        return
    for role, cfg in warm_start_configs(recipe):
        study.enqueue_trial(recipe.space.params_for(cfg, strict=False),
                            user_attrs={CONFIG_OVERRIDE_ATTR: cfg.to_dict(), ROLE_ATTR: role})


__all__ = ["enqueue_warm_starts", "reference_configs", "warm_start_configs"]
