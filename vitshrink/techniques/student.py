"""Student: the teacher replaced by a smaller ViT (``model = "custom"`` with the width, depth and
heads below, or a timm model name) trained by knowledge distillation for `epochs` epochs. Chosen by
``student`` other than "none"; the handler is `vitshrink.compress.distill.student`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..spaces._fit import ModelShape
from ._base import ABOVE_ZERO, ANY, Technique, TechniqueConfig, register_technique, setting
from .finetune import DistillConfig, distill_extras

# "random": timm's initialisation; "teacher": weight selection from the teacher (evenly spaced blocks,
# the leading channels of every tensor; Xu et al., ICLR 2024), then distillation
STUDENT_INITS = ("random", "teacher")


@dataclass(frozen=True)
class StudentConfig(TechniqueConfig):
    model: str = setting("none", as_list=True)  # "custom" or a timm model name
    depth: int = setting(0)  # blocks
    embed_dim: int = setting(0, as_list=True, only="custom")  # width; some head count must divide it
    heads: int = setting(0, as_list=True, only="custom")
    mlp_ratio: float = setting(4.0, only="custom", bounds=ABOVE_ZERO)
    epochs: int = setting(0, needs=1, needs_note="to be trained by distillation")  # KD epochs training the student
    init: str = setting("random", choices=STUDENT_INITS, unused=True)  # timm's init, or weight selection from the teacher
    # how it distils (temperature, alpha, ...) is the candidate's DistillConfig, shared with the KD fine-tune


def _on(values: Mapping[str, Any]) -> dict[str, Any]:
    heads = values.get("student.heads") or 1
    return {"student": "custom", "student.epochs": 1, "student.depth": 1, "student.heads": heads,
            "student.embed_dim": heads * 8}


def _problem(s: StudentConfig) -> str | None:
    if s.model != "custom":
        return None
    if min(s.depth, s.embed_dim, s.heads) < 1:
        return "student='custom' needs student.depth, student.embed_dim and student.heads >= 1"
    if s.embed_dim % s.heads:
        return f"student.embed_dim={s.embed_dim} is not divisible by student.heads={s.heads}"
    if int(s.embed_dim * s.mlp_ratio) < 1:
        return (f"student.mlp_ratio={s.mlp_ratio} leaves the {s.embed_dim}-wide student's MLP without hidden units; "
                "raise it")
    return None


def student_problem(student: nn.Module) -> str | None:
    """Why an (untrained) student cannot go through the stages, or None: after distillation it is
    described, pruned, made low-rank and token-reduced as a timm ViT, so it needs a patch embedding
    and blocks of attention and MLP (a timm name of another family, e.g. a ResNet, has neither).

    Example:
        >>> student_problem(nn.Linear(4, 2))[:44]
        'a student must be a timm VisionTransformer ('
    """
    blocks = getattr(student, "blocks", None)
    block = blocks[0] if blocks is not None and len(blocks) else None
    if (not hasattr(getattr(student, "patch_embed", None), "num_patches")
            or not hasattr(getattr(block, "attn", None), "num_heads") or not hasattr(getattr(block, "mlp", None), "fc1")):
        return (f"a student must be a timm VisionTransformer (patch_embed, blocks of attention and MLP), but "
                f"{type(student).__name__} is not; choose a vit_* / deit_* name or student = 'custom'")
    return None


def _model_problem(model, config):
    return student_problem(model)


def reference_student(space: Any) -> dict[str, Any]:
    """The reference set's student: 2 blocks, 32 wide, 2 heads, trained for the space's fixed epochs
    (10 where none are fixed) with its fixed recovery settings."""
    epochs = int(space.fixed_value("student.epochs", 10))
    return {"student": "custom", "student.depth": 2, "student.embed_dim": 32, "student.heads": 2,
            "student.epochs": epochs, **distill_extras(space)}


def _space_problem(space: Any) -> str | None:
    """A custom student's widths and head counts are picked from lists, and each width some head count
    divides (and each head count divides some width): a pair that only some draws make (64 wide with 3
    heads, beside 48 with 3) is pruned in its trial instead."""
    if any((d := space.dimension(f)) is not None and d.choices is None for f in ("student.heads", "student.embed_dim")):
        return "student.embed_dim and student.heads must be given as choices (lists), not ranges"
    fixed = dict(space.fixed)
    listed = lambda f: list(space.dimension(f).choices) if space.dimension(f) else ([fixed[f]] if f in fixed else [])  # noqa: E731
    heads, embeds = listed("student.heads"), listed("student.embed_dim")
    for e in embeds:
        if heads and all(e % h for h in heads):
            return (f"impossible combination: student.embed_dim={e} is not divisible by any of student.heads={heads}; "
                    "give embed dims that some head count divides")
    for h in heads:
        if embeds and all(e % h for e in embeds):
            return (f"impossible combination: student.heads={h} divides none of student.embed_dim={embeds}; give head "
                    "counts that divide some embed dim")
    return None


def _stage_shape(s: StudentConfig, teacher: ModelShape) -> ModelShape:
    """The deepest custom student keeps the teacher's tokens (its patch embedding is the teacher's)."""
    return ModelShape(f"the deepest custom student ({s.depth} blocks)", teacher.tokens, s.depth, teacher.prefix,
                      teacher.cls_token)


def _cost(s: StudentConfig, plan: Any, named) -> None:
    """Its blocks replace the teacher's (a timm name's as `named` reads them), then it trains."""
    if s.model == "custom":
        heads = max(1, s.heads)
        plan.reshape(s.depth, s.embed_dim, heads, s.embed_dim // heads, int(s.embed_dim * s.mlp_ratio))
    else:
        plan.reshape(*named(s.model))
    plan.train(s.epochs)


def _stage_configs(values_of) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """The students a space can sample that the stages after it must fit: the deepest custom one (with
    a width its head counts divide), and each timm-named one (named by its model)."""
    for model in values_of("student"):
        if model == "none":
            continue
        shape: dict[str, Any] = {}
        if model == "custom":
            pairs = [(e, h) for e in values_of("student.embed_dim") for h in values_of("student.heads") if h and e % h == 0]
            embed, heads = next(iter(pairs), (0, 0))  # (0, 0): the config refuses itself, naming the fields
            shape = {"student.depth": int(max(values_of("student.depth"))), "student.embed_dim": embed,
                     "student.heads": heads, "student.mlp_ratio": max(values_of("student.mlp_ratio"))}
        yield (None if model == "custom" else model), {"student": model, "student.epochs": 1, **shape}


TECHNIQUE = register_technique(Technique(
    name="student", stage="student", config=StudentConfig,
    selector=ANY, choice_setting="model", on=_on, model_problem=_model_problem, problem=_problem, trains="epochs", shared=DistillConfig,
    references=lambda space: [reference_student(space)], stage_configs=_stage_configs, stage_shape=_stage_shape,
    space_problem=_space_problem, cost=_cost,
    features=lambda s: (float(s.model != "none"), float(s.init == "teacher"), float(s.epochs)),
    example=StudentConfig(model="custom", depth=1, embed_dim=32, heads=2, epochs=1),
))
