"""Structured pruning: the `heads` fraction of attention heads and the `mlp` fraction of MLP hidden
units removed from every block (tensors really shrink), ranked by `score`. On when heads or mlp is
above zero; the handler is `vitshrink.compress.prune.prune_vit`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from timm.layers import Attention, Mlp
from torch import nn

from ..errors import ConfigError
from ._base import FRACTION, Technique, TechniqueConfig, register_technique, setting
from ._walk import blocks as walk_blocks
from .finetune import recovery

PRUNE_SCORES = ("magnitude", "taylor", "activation")  # how heads / units are ranked


@dataclass(frozen=True)
class PruneConfig(TechniqueConfig):
    heads: float = setting(0.0, bounds=FRACTION)  # fraction of heads removed per block, in [0, 1)
    mlp: float = setting(0.0, bounds=FRACTION)  # fraction of MLP hidden units removed per block, in [0, 1)
    score: str = setting("magnitude", choices=PRUNE_SCORES)  # how heads / units are ranked


def keep_count(total: int, fraction: float) -> int:
    """How many of `total` structures survive removing `fraction` of them (rounded half up, at least 1).

    Example:
        >>> keep_count(3, 0.5), keep_count(4, 0.5), keep_count(2, 0.9)
        (1, 2, 1)
    """
    removed = math.floor(fraction * total + 0.5)  # half up: Python's round() is half-to-even
    return max(1, total - removed)


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a timm ViT that structured pruning can shrink; raises ConfigError for any other model."""
    blocks = [blk for _, blk in walk_blocks(model)]
    if not blocks:
        raise ConfigError(
            f"structured pruning needs a timm VisionTransformer with .blocks; got {type(model).__name__}"
        )
    for i, blk in enumerate(blocks):
        if not isinstance(getattr(blk, "attn", None), Attention) or not isinstance(getattr(blk, "mlp", None), Mlp):
            raise ConfigError(
                f"block {i} of {type(model).__name__} does not hold timm's Attention and Mlp; structured pruning "
                "supports the vit_* / deit_* VisionTransformer family"
            )
        if not isinstance(blk.attn.qkv, nn.Linear) or not isinstance(blk.mlp.fc1, nn.Linear):
            raise ConfigError(f"block {i} has non-Linear qkv/fc1 layers; prune before low-rank or quantization")
    return list(blocks)


def prune_problem(model: nn.Module, prune_heads: float, prune_mlp: float) -> str | None:
    """Why `model`'s modules cannot have the `prune_heads` / `prune_mlp` fractions removed, or None.

    Read from the modules alone (no weights, no data), so a trial is refused before it trains: the
    blocks must hold timm's Attention and Mlp, and a head / unit can only be removed where no norm
    mixes the heads (`scale_attn_norm`) or the hidden units (`scale_mlp_norm`).

    Example:
        >>> prune_problem(tiny_vit, 0.5, 0.0) is None
        True
    """
    if prune_heads <= 0 and prune_mlp <= 0:
        return None
    try:
        blocks = vit_blocks(model)
    except ConfigError as exc:
        return str(exc)
    for i, blk in enumerate(blocks):
        heads = blk.attn.num_heads
        if keep_count(heads, prune_heads) < heads and not isinstance(blk.attn.norm, nn.Identity):
            return (f"prune.heads={prune_heads:g} removes heads but block {i}'s attention normalises over all heads "
                    "(scale_attn_norm), which mixes them; keep prune.heads at 0 for this model")
        hidden = blk.mlp.fc1.out_features
        if keep_count(hidden, prune_mlp) < hidden and not isinstance(blk.mlp.norm, nn.Identity):
            return (f"prune.mlp={prune_mlp:g} removes MLP units but block {i}'s MLP normalises its hidden layer "
                    "(scale_mlp_norm); keep prune.mlp at 0 for this model")
    return None


def _model_problem(model, s: PruneConfig):
    return prune_problem(model, s.heads, s.mlp)


def _cost(s: PruneConfig, plan, named) -> None:
    """Every block keeps `keep_count` of its heads and MLP units (what the fractions really build)."""
    plan.heads, plan.mlp = keep_count(plan.heads, s.heads), keep_count(plan.mlp, s.mlp)
    plan.effective.update({"prune.heads": plan.heads, "prune.mlp": plan.mlp})


TECHNIQUE = register_technique(Technique(
    name="prune", stage="prune", config=PruneConfig,
    switches=("heads", "mlp"), on={"prune.heads": 0.1}, model_problem=_model_problem,
    example=PruneConfig(heads=0.5, mlp=0.5), identity=(PruneConfig(), 0.0),
    cost=_cost,
    # in the reference set: 30 % and 50 % of heads and MLP units, with the space's fixed fine-tune
    references=lambda space: [{"prune.heads": f, "prune.mlp": f, **recovery(space)} for f in (0.3, 0.5)],
))
