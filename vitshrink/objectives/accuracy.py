"""Top-1 accuracy of a model on a data split, with the logits kept for fingerprints and KD checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import Split


class NonFiniteOutput(ValueError):
    """The model produced NaN or infinite logits, so no accuracy can be trusted (e.g. a broken quantization)."""


@dataclass(frozen=True)
class AccuracyResult:
    """Top-1 accuracy in [0, 1] and the float32 logits (N, classes) it was computed from."""

    accuracy: float
    logits: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.logits.shape[0])


def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> AccuracyResult:
    """Top-1 accuracy of `model` on `split`, in eval mode without gradients (the model's mode is restored).

    Raises:
        NonFiniteOutput: some logit is NaN or infinite.

    Example:
        >>> split = Split(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 0, 0]))
        >>> accuracy(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), split).n
        4
    """
    if len(split) == 0:
        raise ValueError("accuracy needs a non-empty split")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(xb).float().cpu() for xb, _ in split.chunks(batch_size)])
    finally:
        model.train(was_training)
    if logits.ndim != 2 or logits.shape[0] != len(split):
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}; expected ({len(split)}, classes)")
    bad = ~torch.isfinite(logits)
    if bad.any():
        rows = int(bad.any(dim=1).sum())
        raise NonFiniteOutput(f"model produced NaN/inf logits for {rows} of {len(split)} images; "
                              "the compressed model is numerically broken (check quantization or low-rank settings)")
    acc = float((logits.argmax(dim=1) == split.labels.cpu()).float().mean())
    return AccuracyResult(accuracy=acc, logits=logits)


__all__ = ["AccuracyResult", "NonFiniteOutput", "accuracy"]
