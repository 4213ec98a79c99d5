"""`CostPlan`: a ViT described by its numbers, for analytic cost estimates before anything is built.

The vitshrink sampler estimates each candidate's MACs, parameters and training work from the
teacher's shape: it starts a plan from the teacher and lets each chosen technique, in build order,
say what it does to the plan (`Technique.cost`): a student replaces the block shape, pruning keeps
fewer heads and MLP units, Nystrom attends to landmarks, SVD keeps a fraction of the linear weights,
token merging and patch dropping shrink the tokens after a block, a stage that trains adds its
epochs over the structure as it stands. The plan itself names no technique.

Example:
    >>> plan = CostPlan(depth=2, width=32, heads=4, head_dim=8, mlp=64, tokens=17, prefix=1, classes=10)
    >>> plan.heads = 2  # what pruning half the heads does
    >>> plan.merge(3)   # what merging 3 tokens per block does
    >>> macs, params = plan.costs()
    >>> int(macs), int(params)
    (206304, 13152)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class CostPlan:
    """A ViT's numbers (every block alike) and what the chosen techniques do to its blocks' cost."""

    depth: int
    width: int
    heads: int
    head_dim: int
    mlp: int
    tokens: int  # the input's tokens, prefix included
    prefix: int
    classes: int
    attend: dict[int | None, int] = field(default_factory=dict)  # block (None: every block) -> keys attended
    linear: dict[int | None, float] = field(default_factory=dict)  # block (None: every block) -> weights kept
    merged: int = 0  # tokens merged after every block
    dropped: dict[int, float] = field(default_factory=dict)  # block -> fraction of patches dropped after it
    trained: list[tuple[int, float]] = field(default_factory=list)  # (epochs, MACs per image) of each training stage
    # keyed settings as a technique really builds them (pruning's kept heads and units, not its
    # fractions): two candidates equal there, and in their other settings, build the same model
    effective: dict[str, float] = field(default_factory=dict)

    def reshape(self, depth: int, width: int, heads: int, head_dim: int, mlp: int) -> None:
        """Another architecture's blocks (a student)."""
        self.depth, self.width, self.heads, self.head_dim, self.mlp = depth, width, heads, head_dim, mlp

    def attend_to(self, landmarks: int, blocks: tuple[int, ...] = ()) -> None:
        """Queries of `blocks` (empty: every block) attend to at most `landmarks` keys."""
        for b in blocks or (None,):
            self.attend[b] = landmarks

    def keep_linear(self, fraction: float, blocks: tuple[int, ...] = ()) -> None:
        """The linear layers of `blocks` (empty: every block) keep `fraction` of their MACs and weights."""
        for b in blocks or (None,):
            self.linear[b] = fraction

    def merge(self, r: int) -> None:
        """Every block merges `r` tokens away (at least one patch token is left)."""
        self.merged = r

    def drop(self, fraction: float, blocks: tuple[int, ...]) -> None:
        """After each of `blocks` (after its merging), `fraction` of the patch tokens is dropped."""
        for b in blocks:
            self.dropped[b] = fraction

    def train(self, epochs: int) -> None:
        """A stage trains the structure as it stands for `epochs` (forward and backward: 3x its MACs)."""
        self.trained.append((epochs, self.costs()[0]))

    def work(self) -> float:
        """MAC-epochs of training, per training image."""
        return 3 * sum(epochs * macs for epochs, macs in self.trained)

    def costs(self) -> tuple[float, float]:
        """(MACs, parameters) of one image through the plan's blocks, head and embeddings."""
        n = self.tokens
        macs = params = 0.0
        for block in range(self.depth):
            linear = self.width * 3 * self.heads * self.head_dim + self.heads * self.head_dim * self.width \
                + 2 * self.width * self.mlp
            landmarks = self.attend.get(block, self.attend.get(None))
            attended = min(n, landmarks) if landmarks else n
            linear *= self.linear.get(block, self.linear.get(None, 1.0))
            macs += n * linear + 2 * n * attended * self.heads * self.head_dim
            params += linear
            if self.merged:
                n = max(self.prefix + 1, n - self.merged)
            if block in self.dropped and self.dropped[block]:
                n = self.prefix + max(1, math.ceil((n - self.prefix) * (1 - self.dropped[block])))
        params += self.tokens * self.width + self.width * self.classes
        return macs + self.width * self.classes, params


__all__ = ["CostPlan"]
