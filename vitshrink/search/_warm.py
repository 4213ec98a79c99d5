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
from ._schema import CONFIG_OVERRIDE_ATTR, ROLE_ATTR


def reference_configs(space: SearchSpace) -> list[CompressionConfig]:
    """The reference study's hand-picked set: dynamic int8; KD into a small student; 30 % and 50 %
    pruning; Nystrom with two landmark counts; student + dynamic int8."""
    fixed = dict(space.fixed)
    student_epochs = int(fixed.get("student_epochs", 10))
    kd = int(fixed.get("kd_epochs", 0))
    lm = space.dimension("landmarks")
    lo, hi = (int(lm.low), int(lm.high)) if lm and lm.choices is None else (4, 8)
    # a recipe's fixed recovery settings shape every reference config that distils
    recovery = {k: fixed[k] for k in ("kd_augment", "kd_feature_weight") if k in fixed}
    student = dict(student="custom", student_depth=2, student_embed_dim=32, student_heads=2,
                   student_epochs=student_epochs, **recovery)
    tuned = recovery if kd else {}
    return [
        CompressionConfig(quant="dynamic_int8"),
        CompressionConfig(**student),
        CompressionConfig(prune_heads=0.3, prune_mlp=0.3, kd_epochs=kd, **tuned),
        CompressionConfig(prune_heads=0.5, prune_mlp=0.5, kd_epochs=kd, **tuned),
        CompressionConfig(lowrank="nystrom", landmarks=lo, kd_epochs=kd, **tuned),
        CompressionConfig(lowrank="nystrom", landmarks=hi, kd_epochs=kd, **tuned),
        CompressionConfig(**student, quant="dynamic_int8"),
    ]


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
