"""One walker over a ViT's transformer blocks, with a filter (as torchao's `filter_fn(module, fqn)`):
every technique that acts on some blocks picks them through it.

Example:
    >>> [fqn for fqn, _ in blocks(tiny_vit)]
    ['blocks.0', 'blocks.1']
    >>> [fqn for fqn, _ in blocks(tiny_vit, at_blocks((1,)))]
    ['blocks.1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

BlockFilter = Callable[["nn.Module", str], bool]


def blocks(model: nn.Module, filter_fn: BlockFilter | None = None) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks as (fully qualified name, block), in order, those `filter_fn`
    accepts (all when None). A model without `blocks` has none."""
    seq = getattr(model, "blocks", None) or []
    named = [(f"blocks.{i}", b) for i, b in enumerate(seq)]
    return [(fqn, b) for fqn, b in named if filter_fn is None or filter_fn(b, fqn)]


def block_index(fqn: str) -> int:
    """`blocks.3` -> 3."""
    return int(fqn.split(".")[1])


def at_blocks(indices: Iterable[int]) -> BlockFilter:
    """A filter accepting the blocks whose index is in `indices`; empty: every block."""
    wanted = {int(i) for i in indices}
    return lambda _block, fqn: not wanted or block_index(fqn) in wanted


def chosen_indices(model: nn.Module, indices: Iterable[int], setting: str) -> list[int]:
    """The sorted indices of the blocks a technique acts on (`indices`; empty: every block), refusing
    an index the model does not have, naming `setting`.

    Example:
        >>> chosen_indices(tiny_vit, (), "lowrank_blocks"), chosen_indices(tiny_vit, (1, 1), "lowrank_blocks")
        ([0, 1], [1])
    """
    indices = tuple(indices)
    depth = len(blocks(model))
    bad = [i for i in indices if not 0 <= i < depth]
    if bad:
        raise ConfigError(f"{setting}={list(indices)} names block(s) {bad} but the model has {depth} blocks "
                          f"(0..{depth - 1})")
    return [block_index(fqn) for fqn, _ in blocks(model, at_blocks(indices))]


__all__ = ["BlockFilter", "at_blocks", "block_index", "blocks", "chosen_indices"]
