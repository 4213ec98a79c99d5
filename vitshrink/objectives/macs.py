"""MACs of one forward pass, counted by torch.utils.flop_counter (matmul FLOPs / 2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of `model(example)`; quantized and ONNX Runtime models are not traceable
    by the counter, so MACs are taken on the float model (build does this).

    Example:
        >>> count_macs(nn.Linear(4, 2), torch.zeros(1, 4))
        8
    """
    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    return int(counter.get_total_flops() // 2)
