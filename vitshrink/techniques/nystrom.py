"""Nystrom attention: each chosen block's softmax attention approximated through `landmarks` landmark
tokens (exact when landmarks = tokens). Chosen by ``lowrank = "nystrom"``; the handler is
`vitshrink.compress.lowrank.nystrom`.

Example:
    >>> from vitshrink.spaces import CompressionConfig
    >>> CompressionConfig({"nystrom": NystromConfig(landmarks=8)}) == CompressionConfig({"nystrom": {"landmarks": 8}})
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..spaces._fit import block_demands, indices_problem
from ._base import AT_LEAST_ZERO, Technique, TechniqueConfig, register_technique, setting
from .finetune import recovery


@dataclass(frozen=True)
class NystromConfig(TechniqueConfig):
    landmarks: int = setting(0, bounds=AT_LEAST_ZERO, needs=1, unused=True)  # landmark tokens per head; at most the tokens a block sees
    blocks: tuple[int, ...] = setting(())  # the blocks converted; empty: every block
    conv: int = setting(0, bounds=AT_LEAST_ZERO)  # kernel of the depthwise-conv skip on the values; 0: off


def landmarks_problem(landmarks: int, shape: Any) -> str | None:
    if landmarks <= shape.tokens:
        return None
    return (f"nystrom.landmarks reaches {landmarks} but {shape.name} has {shape.tokens} tokens ({shape.patches} patches + "
            f"{shape.prefix} prefix); Nystrom needs landmarks <= tokens, so keep nystrom.landmarks <= {shape.tokens}")


def _shape_problem(s: NystromConfig, shape):
    return indices_problem("nystrom.blocks", s.blocks, shape) or landmarks_problem(s.landmarks, shape)


def _demands(values_of):
    most = max(values_of("nystrom.landmarks"))
    yield (lambda s: landmarks_problem(most, s)), (lambda s: s.tokens)
    yield from block_demands("nystrom.blocks", values_of("nystrom.blocks"))


def lowrank_problem(model: nn.Module, mode: str) -> str | None:
    """Why `model`'s modules cannot take low-rank `mode` ("nystrom" or "svd"), or None: both need a
    timm ViT's blocks; Nystrom also a token count and timm-style attention (qkv, proj, heads).

    Example:
        >>> lowrank_problem(tiny_vit, "nystrom") is None
        True
    """
    if mode == "none":
        return None
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        return f"lowrank={mode!r} needs a timm VisionTransformer with blocks; got {type(model).__name__}"
    if mode != "nystrom":
        return None
    if not hasattr(getattr(model, "patch_embed", None), "num_patches"):
        return f"lowrank='nystrom' needs a model whose token count is known (patch_embed.num_patches); {type(model).__name__} has none"
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        missing = [a for a in ("qkv", "proj", "num_heads", "head_dim") if not hasattr(attn, a)]
        if missing and not hasattr(attn, "landmarks"):  # not already Nystrom attention
            return (f"lowrank='nystrom' converts timm-style attention, but block {i}'s {type(attn).__name__} has no "
                    f"{', '.join(missing)}; search lowrank='svd' or 'none' for this model")
    return None


def _model_problem(model, config):
    return lowrank_problem(model, "nystrom")


def _references(space):
    """Two landmark counts, the ends of the space's range (4 and 8 where it has none), with the
    space's fixed fine-tune."""
    lm = space.dimension("nystrom.landmarks")
    lo, hi = (int(lm.low), int(lm.high)) if lm and lm.choices is None else (4, 8)
    return [{"lowrank": "nystrom", "nystrom.landmarks": m, **recovery(space)} for m in (lo, hi)]


def _identity(model):
    """m = n: as many landmarks as the blocks see tokens (exact up to the iterative pseudo-inverse)."""
    tokens = model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 1)
    return NystromConfig(landmarks=tokens), 1e-3


TECHNIQUE = register_technique(Technique(
    name="nystrom", stage="lowrank", config=NystromConfig,
    selector="nystrom", on={"lowrank": "nystrom", "nystrom.landmarks": 8},
    example=NystromConfig(landmarks=4), identity=_identity,
    shape_problem=_shape_problem, model_problem=_model_problem, demands=_demands, references=_references,
    cost=lambda s, plan, named: plan.attend_to(s.landmarks, s.blocks) if s.landmarks else None,
    features=lambda s: (float(s.landmarks),),
))
