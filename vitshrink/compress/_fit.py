"""Whether a config can be applied to a teacher at all, decided from modules and numbers before anything
trains: the model leaving the student stage (the teacher, or the student built on the meta device, which
allocates nothing) against the config's numbers (`vitshrink.techniques.config_problem`) and each technique's
own precondition (each chosen technique's `model_problem`, `vitshrink.techniques`).

`build` calls `check_fits` first, so an impossible config fails before a student is distilled; a search
trial calls it after sampling and prunes the trial instead of failing it.

Example:
    >>> impossible_reason(teacher, CompressionConfig({"nystrom": {"landmarks": 40}}))
    'nystrom.landmarks reaches 40 but the teacher has 17 tokens (16 patches + 1 prefix); ...'
"""

from __future__ import annotations

import weakref

from torch import nn

from ..spaces import CompressionConfig, ConfigError, ModelShape
from ..techniques import chosen_techniques, config_problem
from .distill import stage_model
from .lowrank import num_tokens


def model_shape(model: nn.Module, name: str) -> ModelShape:
    """The numbers of a timm ViT the settings depend on (tokens, depth, prefix tokens, cls token).

    Raises:
        ConfigError: for a model without patch_embed (its token count is unknown).
    """
    return ModelShape(name, num_tokens(model), len(getattr(model, "blocks", ())),
                      int(getattr(model, "num_prefix_tokens", 0)), getattr(model, "cls_token", None) is not None)


# teacher -> config -> its reason: a trial asks once (after sampling), its screening and its build
# read the answer (a teacher is never modified; a rebuilt one is another object)
_ASKED: weakref.WeakKeyDictionary[nn.Module, dict[CompressionConfig, str | None]] = weakref.WeakKeyDictionary()
_ASKED_MAX = 4096  # answers kept per teacher


def impossible_reason(teacher: nn.Module, config: CompressionConfig) -> str | None:
    """Why `config` can never be built from `teacher`, or None; nothing is trained or measured. Each
    (teacher, config) is asked once: a trial's sampling, screening and build share the answer."""
    asked = _ASKED.setdefault(teacher, {})
    if config not in asked:
        if len(asked) >= _ASKED_MAX:
            asked.clear()
        asked[config] = _reason(teacher, config)
    return asked[config]


def _reason(teacher: nn.Module, config: CompressionConfig) -> str | None:
    try:
        model, name = stage_model(teacher, config)
    except ConfigError as exc:
        return str(exc)
    chosen = chosen_techniques(config)
    student = [t for t in chosen if t.stage == "student"]
    if (problem := next((p for t in student if t.model_problem and (p := t.model_problem(model, t.settings(config)))),
                        None)):
        return problem
    try:
        shape = model_shape(model, name)
    except ConfigError:
        shape = None  # not a ViT: the technique checks below say which stage cannot take it
    if shape is not None and (problem := config_problem(config, shape)):
        return problem
    return next((p for t in chosen if t.stage != "student" and t.model_problem is not None
                 and (p := t.model_problem(model, t.settings(config)))), None)


def check_fits(teacher: nn.Module, config: CompressionConfig) -> None:
    """Raise ConfigError ("impossible combination: ...") when `config` can never be built from `teacher`."""
    reason = impossible_reason(teacher, config)
    if reason:
        raise ConfigError(f"impossible combination: {reason}")


__all__ = ["check_fits", "impossible_reason", "model_shape", "stage_model"]
