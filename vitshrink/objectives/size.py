"""Model size: the bytes of the deployed artifact, and the parameter count."""

from __future__ import annotations

import torch
from torch import nn


def safetensors_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict written as one safetensors file (header included).

    Example:
        >>> safetensors_size_bytes(nn.Linear(4, 2)) > 4 * (4 * 2 + 2)
        True
    """
    from safetensors.torch import save

    tensors = {}
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            # clone: safetensors refuses tensors that share storage (tied weights, views)
            tensors[name] = value.detach().clone().contiguous()
    return len(save(tensors))


def size_bytes(model: nn.Module) -> int:
    """Size of what would be deployed: `vitshrink.compress.quantize.deployed_size_bytes` (which knows
    quantized and ONNX Runtime models), or the safetensors size of the state_dict when that is absent.

    Example:
        >>> size_bytes(nn.Linear(4, 2)) > 0
        True
    """
    try:
        from ..compress.quantize import deployed_size_bytes
    except ImportError:
        return safetensors_size_bytes(model)
    return int(deployed_size_bytes(model))


def param_count(model: nn.Module) -> int:
    """Number of weights, counting the int8 weights of torch.ao quantized Linear layers (which are packed,
    not parameters) as well as ordinary parameters.

    Example:
        >>> param_count(nn.Linear(4, 2))
        10
    """
    total = 0
    for module in model.modules():
        total += sum(p.numel() for p in module.parameters(recurse=False))
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # packed quantized Linear
            total += weight().numel()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += bias.numel() if bias is not None else 0
    return total


__all__ = ["param_count", "safetensors_size_bytes", "size_bytes"]
