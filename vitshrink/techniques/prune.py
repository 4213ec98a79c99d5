"""Structured pruning: the `heads` fraction of attention heads and the `mlp` fraction of MLP hidden
units removed from every block (tensors really shrink), ranked by `score`. On when heads or mlp is
above zero; the handler is `vitshrink.compress.prune.prune_vit`."""

from __future__ import annotations

from dataclasses import dataclass

from ..spaces._config import PRUNE_SCORES
from ._base import FRACTION, Technique, register_technique, setting


@dataclass(frozen=True)
class PruneConfig:
    heads: float = setting(0.0, bounds=FRACTION)  # fraction of heads removed per block, in [0, 1)
    mlp: float = setting(0.0, bounds=FRACTION)  # fraction of MLP hidden units removed per block, in [0, 1)
    score: str = setting("magnitude", choices=PRUNE_SCORES)  # how heads / units are ranked


def _model_problem(model, config):
    from ..compress.prune import prune_problem

    return prune_problem(model, config.prune_heads, config.prune_mlp)


TECHNIQUE = register_technique(Technique(
    name="prune", stage="prune", config=PruneConfig,
    fields={"heads": "prune_heads", "mlp": "prune_mlp", "score": "prune_score"},
    switches=("heads", "mlp"), on={"prune_heads": 0.1}, model_problem=_model_problem,
    example={"prune_heads": 0.5, "prune_mlp": 0.5}, identity=({"prune_heads": 0.0, "prune_mlp": 0.0}, 0.0),
))
