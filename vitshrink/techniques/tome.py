"""Token merging (ToMe): `r` tokens merged into their most similar neighbours in every block. On
when r is above zero; the handler (shared with patch dropping) is `vitshrink.compress.tokens.reduce_tokens`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._base import AT_LEAST_ZERO, Technique, TechniqueConfig, register_technique, setting
from .patch_drop import token_problem


@dataclass(frozen=True)
class TomeConfig(TechniqueConfig):
    r: int = setting(0, bounds=AT_LEAST_ZERO)  # tokens merged per block; at most half the patches


def merge_problem(r: int, shape: Any) -> str | None:
    # ToMe merges at most half the patches of a block and clamps later blocks the same way, so a
    # whole stack never merges below one patch token: only the first block's bound can be exceeded.
    most = shape.patches // 2
    if r <= most:
        return None
    return (f"tome.r reaches {r} but {shape.name} has {shape.patches} patch tokens, and a block can merge "
            f"at most half of them ({most}); keep tome.r <= {most}")


def _demands(values_of):
    most = max(values_of("tome.r"))
    yield (lambda s: merge_problem(most, s)), (lambda s: s.patches)


def _model_problem(model, s: TomeConfig):
    return token_problem(model, s.r, 0.0)


TECHNIQUE = register_technique(Technique(
    name="tome", stage="tokens", config=TomeConfig, switches=("r",),
    on={"tome.r": 1}, example=TomeConfig(r=2), identity=(TomeConfig(), 0.0),
    shape_problem=lambda s, shape: merge_problem(s.r, shape), model_problem=_model_problem,
    cost=lambda s, plan, named: plan.merge(s.r), features=lambda s: (float(s.r),),
    demands=_demands,
))
