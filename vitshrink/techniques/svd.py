"""Truncated SVD: qkv, proj, fc1 and fc2 of the chosen blocks replaced by two thin Linear layers
keeping the `rank` fraction of the singular values. Chosen by ``lowrank = "svd"``; the handler is
`vitshrink.compress.svd.svd_factorise`."""

from __future__ import annotations

from dataclasses import dataclass

from ..spaces._fit import block_demands, indices_problem
from ._base import Bounds, Technique, TechniqueConfig, register_technique, setting
from .nystrom import lowrank_problem


@dataclass(frozen=True)
class SvdConfig(TechniqueConfig):
    rank: float = setting(1.0, bounds=Bounds(0.0, 1.0, low_open=True))  # fraction of the full rank kept, in (0, 1]
    blocks: tuple[int, ...] = setting(())  # the blocks factorised; empty: every block


def _model_problem(model, config):
    return lowrank_problem(model, "svd")


TECHNIQUE = register_technique(Technique(
    name="svd", stage="lowrank", config=SvdConfig,
    selector="svd", on={"lowrank": "svd"},
    example=SvdConfig(rank=0.5), identity=(SvdConfig(rank=1.0), 0.0),
    shape_problem=lambda s, shape: indices_problem("svd.blocks", s.blocks, shape),
    model_problem=_model_problem, demands=lambda values_of: block_demands("svd.blocks", values_of("svd.blocks")),
    cost=lambda s, plan, named: plan.keep_linear(min(1.0, 2 * s.rank), s.blocks),  # two thin layers per kept rank
))
