"""Patch dropping: at the blocks `at`, the `fraction` of patch tokens the cls token attends to least
is dropped. On when fraction is above zero; the handler (shared with ToMe) is
`vitshrink.compress.tokens.reduce_tokens`."""

from __future__ import annotations

from dataclasses import dataclass

from ..spaces._fit import block_demands, drop_problem, indices_problem
from ._base import FRACTION, Technique, register_technique, setting


@dataclass(frozen=True)
class PatchDropConfig:
    fraction: float = setting(0.0, bounds=FRACTION)  # fraction of patch tokens dropped at each block in `at`, in [0, 1)
    at: tuple[int, ...] = setting(())  # the block indices where patches are dropped


def _problem(settings: PatchDropConfig) -> str | None:
    if not settings.at:
        return "token_drop > 0 needs token_drop_at: the block indices where patches are dropped"
    return None


def _shape_problem(config, shape):
    return drop_problem(shape) or indices_problem("token_drop_at", config.token_drop_at, shape)


def _demands(values_of):
    yield from block_demands("token_drop_at", values_of)
    yield drop_problem, (lambda s: s.cls_token)


def _model_problem(model, config):
    from ..compress.tokens import token_problem

    return token_problem(model, 0, config.token_drop)


TECHNIQUE = register_technique(Technique(
    name="patch_drop", stage="tokens", config=PatchDropConfig, fields={"fraction": "token_drop", "at": "token_drop_at"},
    switches=("fraction",), on={"token_drop": 0.1, "token_drop_at": (1,)},
    example={"token_drop": 0.25, "token_drop_at": (1,)}, identity=({"token_drop": 0.0}, 0.0),
    shape_problem=_shape_problem, model_problem=_model_problem, problem=_problem, demands=_demands,
))
