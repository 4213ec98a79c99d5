"""Model size: the bytes of the deployed artifact, and the parameter count.

What is deployed is asked of the model: a runtime's module holds its artifact (`model_bytes`, the ONNX
graph of an ONNX Runtime module; `artifact_bytes()`, another runtime's files), a torch-quantized model
is its serialised state, any other its safetensors file.
"""

from __future__ import annotations

import io

import torch
from safetensors.torch import save
from torch import nn


def safetensors_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict written as one safetensors file (header included).

    Example:
        >>> safetensors_size_bytes(nn.Linear(4, 2)) > 4 * (4 * 2 + 2)
        True
    """
    tensors = {}
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            # clone: safetensors refuses tensors that share storage (tied weights, views)
            tensors[name] = value.detach().clone().contiguous()
    return len(save(tensors))


def is_torch_quantized(model: nn.Module) -> bool:
    """True when `model` holds torch.ao quantized modules (packed int8 weights)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def serialize_deployable(model: nn.Module) -> bytes:
    """The bytes that would be shipped for `model` in its mode.

    ONNX bytes for a module holding its ONNX graph (`model_bytes`: ONNX Runtime); the files of another
    runtime's module (`artifact_bytes()`: OpenVINO IR); the torch-serialised state (int8 weights,
    scales, zero points and float parameters) for a torch-quantized model; the safetensors file of the
    state_dict otherwise (float32 or bfloat16 weights, a tied weight once). Only for measuring and
    exporting: nothing here is ever unpickled.
    """
    if isinstance(graph := getattr(model, "model_bytes", None), (bytes, bytearray)):
        return bytes(graph)
    if callable(artifact := getattr(model, "artifact_bytes", None)):
        return artifact()
    state = model.state_dict()
    if is_torch_quantized(model):
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()
    tensors, seen = {}, set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if key in seen:  # a tied weight is stored once
            continue
        seen.add(key)
        tensors[name] = value.detach().contiguous().clone()
    return save(tensors)


def deployed_size_bytes(model: nn.Module) -> int:
    """Size in bytes of the artifact deployed for `model`; see `serialize_deployable`.

    Example:
        >>> deployed_size_bytes(nn.Linear(4, 2)) > 4 * (4 * 2 + 2)
        True
    """
    return len(serialize_deployable(model))


def size_bytes(model: nn.Module) -> int:
    """The size objective: the bytes of what would be deployed (`deployed_size_bytes`).

    Example:
        >>> size_bytes(nn.Linear(4, 2)) > 0
        True
    """
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


__all__ = ["deployed_size_bytes", "is_torch_quantized", "param_count", "safetensors_size_bytes", "serialize_deployable",
           "size_bytes"]
