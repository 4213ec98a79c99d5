"""Stronger KD recovery (opt-in: `kd_augment`, `kd_feature_weight`): the teacher runs on each
training batch instead of being read from its cached logits, so

- the KD batches can be augmented (flips, shifts) and the soft targets still describe the images
  the student sees (cached logits are of the un-augmented images), and
- the student can also match the teacher's block outputs (token features): a cosine loss at each
  student block against the teacher block that ends the same share of the depth (the same block
  when the depths agree: pruned, low-rank and token-reduced models, same-depth students), through a
  trained linear projection where the widths differ (FitNets; Romero et al., ICLR 2015).

Cost: one teacher forward (no gradients) per training batch, on the training device and precision.

Example:
    >>> block_pairs(student_depth=2, teacher_depth=4)
    [(0, 1), (1, 3)]
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def augment_kinds(kd_augment: str) -> tuple[str, ...]:
    """The `TrainSettings.augment` kinds of a `kd_augment` setting ("none", "flip", "flip+shift", ...).

    Example:
        >>> augment_kinds("flip+shift"), augment_kinds("none")
        (('flip', 'shift'), ())
    """
    return () if kd_augment == "none" else tuple(kd_augment.split("+"))


def block_pairs(student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs: student block i is matched with the teacher block that
    ends the same fraction of the depth, ceil((i + 1) * T / S) - 1 (block i itself when S == T)."""
    return [(i, math.ceil((i + 1) * teacher_depth / student_depth) - 1) for i in range(student_depth)]


def _tokens(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # a ToMe block returns (tokens, sizes)


def feature_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor],
                 projections: nn.ModuleList | None = None) -> torch.Tensor:
    """Mean over blocks of (1 - cosine similarity) between student and teacher token features
    (B, N, D): per token when the token counts agree, else of the token means (a token-reduced
    student keeps fewer tokens). Zero exactly when every feature points the teacher's way.

    Example:
        >>> f = [torch.randn(2, 5, 8)]
        >>> float(feature_loss(f, f)) < 1e-6
        True
    """
    losses = []
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        s = s.float()
        if projections is not None and not isinstance(projections[i], nn.Identity):
            s = projections[i](s)
        t = t.float()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1), t.mean(1)
        losses.append((1.0 - F.cosine_similarity(s, t, dim=-1)).mean())
    return torch.stack(losses).mean()


class _BlockTaps:
    """Forward hooks that keep the outputs of some of a model's blocks during one forward."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        blocks = list(model.blocks)
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [blocks[i].register_forward_hook(self._keep(i)) for i in sorted(set(indices))]

    def _keep(self, i: int):
        def hook(_module, _inputs, out):
            self.outputs[i] = _tokens(out)
        return hook

    def take(self, indices: list[int]) -> list[torch.Tensor]:
        feats = [self.outputs[i] for i in indices]
        self.outputs = {}
        return feats

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class OnlineTeacher:
    """The teacher on the training device, run on each batch (eval mode, no gradients); with
    `feature_weight` > 0 it also taps the block outputs `feature_loss` compares."""

    def __init__(self, teacher: nn.Module, student: nn.Module, device: str, feature_weight: float = 0.0) -> None:
        self.teacher = copy.deepcopy(teacher).to(device).eval()  # the shared CPU teacher is left as it is
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = float(feature_weight)
        self.projections: nn.ModuleList | None = None
        self.pairs: list[tuple[int, int]] = []
        if self.weight > 0:
            self.pairs = block_pairs(len(student.blocks), len(self.teacher.blocks))
            t_dim = int(self.teacher.embed_dim)
            s_dim = int(student.embed_dim)
            self.projections = nn.ModuleList(
                nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim, bias=False) for _ in self.pairs)
            self._s_taps = _BlockTaps(student, [s for s, _ in self.pairs])
            self._t_taps = _BlockTaps(self.teacher, [t for _, t in self.pairs])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).float()

    def extra_loss(self) -> torch.Tensor | None:
        """The weighted feature loss of the last teacher and student forwards (None when off)."""
        if self.weight <= 0:
            return None
        s = self._s_taps.take([i for i, _ in self.pairs])
        t = self._t_taps.take([j for _, j in self.pairs])
        return self.weight * feature_loss(s, t, self.projections)

    def close(self) -> None:
        if self.weight > 0:
            self._s_taps.remove()
            self._t_taps.remove()


__all__ = ["OnlineTeacher", "augment_kinds", "block_pairs", "feature_loss"]
