"""The structural signature: a hash of what decides a model's run time on a target, not its weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator

import onnxruntime
import torch
from torch import nn

from ._protocol import LatencyProtocol
from ._target import Target

# Module attributes that change run time without changing a tensor shape (heads, merged tokens,
# kernels, runtime modes), on torch's and timm's modules. A module class of a technique adds its own
# by a class attribute `structural_attributes` (Nystrom attention: its landmark count). Weight-dependent
# values (kept indices, quantization scales) are deliberately absent: two models that differ only
# there must share a signature.
STRUCTURAL_ATTRIBUTES = (
    "num_heads", "head_dim", "attn_dim", "r", "drop", "rank", "mode", "quant_mode", "fused_attn",
    "num_prefix_tokens", "in_features", "out_features", "kernel_size", "stride", "groups", "kind",
)


def _structure_rows(model: nn.Module) -> Iterator[list[Any]]:
    def simple(v: Any) -> bool:
        if isinstance(v, (bool, int, float, str)) or v is None:
            return True
        return isinstance(v, (tuple, list)) and all(isinstance(e, (bool, int, float, str)) for e in v)

    def tensor_row(name: str, t: Any) -> list[Any]:
        if isinstance(t, torch.Tensor):
            # the tensor's class catches tensor-subclass quantization (torchao) that keeps dtype/shape
            return [name, type(t).__name__, list(t.shape), str(t.dtype)]
        if isinstance(t, (tuple, list)):
            return [name, [tensor_row("", e) for e in t]]
        return [name, type(t).__name__]

    for path, module in model.named_modules():
        names = (*STRUCTURAL_ATTRIBUTES, *getattr(type(module), "structural_attributes", ()))
        attrs = {a: getattr(module, a) for a in names if simple(getattr(module, a, object()))}
        attrs = {a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()}
        yield [path, type(module).__module__ + "." + type(module).__qualname__, attrs]
        graph = getattr(module, "model_bytes", None)
        if isinstance(graph, (bytes, bytearray)):  # an ONNX Runtime wrapper: the graph is the structure
            yield [path, "onnx", _onnx_structure(bytes(graph))]
        # the module's own entries (no dot): parameters, buffers and packed quantized weights alike
        for name, t in module.state_dict(keep_vars=True).items():
            if "." not in name:
                yield tensor_row(f"{path}.{name}", t)


def _onnx_structure(model_bytes: bytes) -> list[Any]:
    """Operators, their attributes and the shapes/types of the initializers they read: not the values."""
    import onnx  # heavy (0.7 s on top of import vitshrink), only ONNX-runtime modules need it

    graph = onnx.load_from_string(model_bytes).graph

    def simple(v: Any) -> Any:
        if isinstance(v, onnx.TensorProto):
            return ["tensor", list(v.dims), v.data_type]
        if isinstance(v, bytes):
            return v.decode(errors="replace")
        return v if isinstance(v, (int, float, str)) else type(v).__name__

    def attr(a: Any) -> Any:
        value = onnx.helper.get_attribute_value(a)
        return [simple(v) for v in value] if isinstance(value, list) else simple(value)

    def value_info(v: Any) -> list[Any]:
        t = v.type.tensor_type
        return [t.elem_type, [d.dim_value or d.dim_param for d in t.shape.dim]]

    # The exporter shares equal-valued initializers through Identity nodes (e.g. all-zero biases of a
    # fresh model), which depends on the weights: so Identity nodes are skipped and each operator
    # records the shape/type of the initializers it reads, wherever they are stored.
    weights = {t.name: [list(t.dims), t.data_type] for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input}

    def operand(name: str) -> Any:
        while name in alias:
            name = alias[name]
        return weights.get(name, "x")

    return [
        [value_info(v) for v in graph.input], [value_info(v) for v in graph.output],
        [[n.domain, n.op_type, sorted((a.name, attr(a)) for a in n.attribute), [operand(i) for i in n.input]]
         for n in graph.node if n.op_type != "Identity"],
    ]


def _runtime(model: nn.Module) -> dict[str, str]:
    runtime = {"torch": torch.__version__}
    if any(isinstance(getattr(m, "model_bytes", None), (bytes, bytearray)) for m in model.modules()):
        runtime["onnxruntime"] = onnxruntime.__version__
    return runtime


def structural_signature(
    model: nn.Module, example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol,
    extra: dict[str, Any] | None = None,
) -> str:
    """A hash of what decides run time: the module tree (classes, tensor shapes/dtypes/kinds, the
    `STRUCTURAL_ATTRIBUTES`), `extra`, input shape, the protocol (warm-up, runs and their cap, target
    CV, batches, threads, the reference model's own signature), runtime versions (torch, ONNX
    Runtime, CUDA), host, CPU and GPU.

    Weight values are not part of it: two models of one structure with different weights share it.

    Example:
        >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> t, p = Target("cpu", 1), LatencyProtocol()
        >>> structural_signature(a, (4,), t, p) == structural_signature(b, (4,), t, p)
        True
    """
    target_info = target.describe()
    blob = {
        "modules": list(_structure_rows(model)),
        "extra": extra or {},
        "input": list(example_shape),
        "protocol": {"warmup": protocol.warmup, "runs": protocol.runs, "batches": list(protocol.all_batches),
                     "throughput_batch": protocol.throughput_batch, "max_runs": protocol.max_runs,
                     "target_cv": protocol.target_cv, "max_seconds": protocol.max_seconds},
        "threads": protocol.threads_for(target),
        "runtime": _runtime(model),
        "target": {k: target_info.get(k) for k in ("target", "host", "cpu", "machine", "cuda_device", "torch")},
    }
    if protocol.reference is not None:  # the stored ratio is to this reference
        blob["reference"] = reference_signature(example_shape, target, protocol)
    if "cuda" in target_info:  # the CUDA runtime times kernels too; absent on CPU, so CPU keys stay as they were
        blob["target"]["cuda"] = target_info["cuda"]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def reference_signature(example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol) -> str:
    """The structural signature of `protocol.reference` timed alone under `protocol`."""
    alone = dataclasses.replace(protocol, reference=None)
    return structural_signature(protocol.reference, example_shape, target, alone)
