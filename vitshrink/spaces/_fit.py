"""What the compression settings demand of the model they act on, in numbers: block indices below its
depth, landmarks within its tokens, merging at most half of its patches, a cls token for patch dropping.

The stages after the student act on the student when there is one, so these rules are asked of the
model that leaves the student stage. `vitshrink.techniques.config_problem` checks one config against
one model (a trial), asking each chosen technique's `shape_problem`, which these rules serve;
`SearchSpace.check_model` asks, for every value a space can sample, whether some model the space can
produce honours it (the study), so a value that no model honours is refused before the study exists
and a value that only some samples honour is pruned in the trial that samples it.

Example:
    >>> indices_problem("token_drop_at", (2,), ModelShape("a 1-block student", tokens=17, depth=1))
    'token_drop_at names block(s) [2] but a 1-block student has 1 blocks; use indices 0..0'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable



@dataclass(frozen=True)
class ModelShape:
    """The numbers of a timm ViT that the settings depend on.

    Args:
        name: How messages name the model ("the teacher vit_tiny_patch16_224", "the custom student").
        tokens: Tokens entering the first block (patches + prefix tokens).
        depth: Number of transformer blocks.
        prefix: Tokens that are never merged or dropped (cls, distillation and register tokens).
        cls_token: Whether the model has a cls token (patch dropping ranks patches by its attention).
    """

    name: str
    tokens: int
    depth: int
    prefix: int = 1
    cls_token: bool = True

    @property
    def patches(self) -> int:
        return self.tokens - self.prefix


def indices_problem(setting: str, indices: Iterable[int], shape: ModelShape) -> str | None:
    bad = sorted({int(i) for i in indices if not 0 <= int(i) < shape.depth})
    if not bad:
        return None
    return (f"{setting} names block(s) {bad} but {shape.name} has {shape.depth} blocks; "
            f"use indices 0..{shape.depth - 1}")


def block_demands(setting: str, values: Iterable[Any]):
    """A search space's demands for block-index setting `setting` (named so in messages): each value
    it can sample, of `values`, names blocks that some model must have (the deepest comes closest)."""
    for value in values:
        yield (lambda s, v=value: indices_problem(setting, v or (), s)), (lambda s: s.depth)


__all__ = ["ModelShape", "block_demands", "indices_problem"]
