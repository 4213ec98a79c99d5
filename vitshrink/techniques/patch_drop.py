"""Patch dropping: at the blocks `at`, the `fraction` of patch tokens the cls token attends to least
is dropped. On when fraction is above zero; the handler (shared with ToMe) is
`vitshrink.compress.tokens.reduce_tokens`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..spaces._fit import block_demands, indices_problem
from ._base import FRACTION, Technique, TechniqueConfig, register_technique, setting


@dataclass(frozen=True)
class PatchDropConfig(TechniqueConfig):
    fraction: float = setting(0.0, bounds=FRACTION)  # fraction of patch tokens dropped at each block in `at`, in [0, 1)
    at: tuple[int, ...] = setting(())  # the block indices where patches are dropped


def _problem(settings: PatchDropConfig) -> str | None:
    if not settings.at:
        return "patch_drop.fraction > 0 needs patch_drop.at: the block indices where patches are dropped"
    return None


def drop_problem(shape: Any) -> str | None:
    if shape.cls_token:
        return None
    return (f"patch_drop ranks patches by the cls token's attention but {shape.name} has no cls token "
            "(class_token = false); search tome instead, or give the model a cls token")


def _shape_problem(s: PatchDropConfig, shape):
    return drop_problem(shape) or indices_problem("patch_drop.at", s.at, shape)


def _demands(values_of):
    yield from block_demands("patch_drop.at", values_of("patch_drop.at"))
    yield drop_problem, (lambda s: s.cls_token)


_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTENTION_PARTS = ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop", "num_heads", "head_dim", "attn_dim",
                    "scale")


def token_problem(model: nn.Module, merge_r: int, drop: float) -> str | None:
    """Why `model`'s modules cannot merge (`merge_r` > 0) or drop (`drop` > 0) tokens, or None.

    Read from the modules alone, as `ToMeBlock` and `reduce_tokens` would find it: timm ViT blocks
    whose attention exposes its keys, and a cls token when patches are dropped.

    Example:
        >>> token_problem(tiny_vit, 2, 0.0) is None
        True
    """
    if merge_r <= 0 and drop <= 0:
        return None
    if drop > 0 and getattr(model, "cls_token", None) is None:
        return ("patch_drop ranks patches by the cls token's attention, but this model has no cls token; "
                "use tome instead")
    for i, blk in enumerate(getattr(model, "blocks", None) or []):
        missing = [p for p in _BLOCK_PARTS if not hasattr(blk, p)]
        attn = getattr(blk, "attn", None)
        if not missing and not hasattr(attn, "landmarks"):  # Nystrom attention exposes its keys its own way
            missing = [f"attn.{p}" for p in _ATTENTION_PARTS if not hasattr(attn, p)]
        if missing:
            return (f"token reduction needs timm ViT blocks, but block {i} ({type(blk).__name__}) has no "
                    f"{', '.join(missing)}; keep tome.r and patch_drop.fraction at 0 for this model")
    return None


def _model_problem(model, s: PatchDropConfig):
    return token_problem(model, 0, s.fraction)


TECHNIQUE = register_technique(Technique(
    name="patch_drop", stage="tokens", config=PatchDropConfig,
    switches=("fraction",), on={"patch_drop.fraction": 0.1, "patch_drop.at": (1,)},
    example=PatchDropConfig(fraction=0.25, at=(1,)), identity=(PatchDropConfig(), 0.0),
    shape_problem=_shape_problem, model_problem=_model_problem, problem=_problem, demands=_demands,
    cost=lambda s, plan, named: plan.drop(s.fraction, s.at), features=lambda s: (float(s.fraction),),
))
