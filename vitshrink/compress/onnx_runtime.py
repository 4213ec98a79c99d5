"""ONNX export and an ONNX Runtime model that the rest of vitshrink treats like any `nn.Module`.

`export_onnx` writes a float model (or an `OrtModule`'s own graph) to a file with a dynamic batch
axis; `OrtModule` wraps ONNX bytes in a CPU `InferenceSession` whose forward takes and returns torch
tensors, so accuracy and latency measure it exactly as they measure eager models.
`quantize_onnx_dynamic` / `quantize_onnx_static` are ONNX Runtime's post-training quantizers over bytes.

Example:
    >>> ort_model = OrtModule(onnx_bytes(model, example))
    >>> ort_model(example).dtype
    torch.float32
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from torch import nn

from ..objectives.size import is_torch_quantized

log = logging.getLogger(__name__)

OPSET = 17
_INPUT, _OUTPUT = "images", "logits"


class OnnxExportError(RuntimeError):
    """A model that the ONNX exporters cannot turn into a graph that runs correctly."""


class OrtModule(nn.Module):
    """An ONNX graph run by ONNX Runtime on the CPU, behind the `nn.Module` interface.

    The session is created lazily and re-created when `torch.get_num_threads()` changes, so the
    latency protocol's thread setting applies to ORT as it does to torch. Copies and pickles carry
    only the ONNX bytes (an `InferenceSession` cannot be copied).

    Args:
        model_bytes: a serialised ONNX model with one image input and one logits output.
        kind: a label for what the graph holds ("fp32", "int8_dynamic", ...), kept for reports.

    Example:
        >>> m = OrtModule(onnx_bytes(model, example), kind="fp32")
        >>> m(torch.randn(3, 1, 16, 16)).shape
        torch.Size([3, 10])
    """

    def __init__(self, model_bytes: bytes, kind: str = "fp32") -> None:
        super().__init__()
        self.model_bytes = bytes(model_bytes)
        self.kind = kind
        self._session: Any = None
        self._threads = 0

    def session(self):
        """The `InferenceSession`, built for the current torch thread count."""
        threads = torch.get_num_threads()
        if self._session is None or self._threads != threads:
            self._session = ort_session(self.model_bytes, threads)
            self._threads = threads
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sess = self.session()
        feed = {sess.get_inputs()[0].name: x.detach().to(torch.float32).contiguous().numpy()}
        return torch.from_numpy(sess.run(None, feed)[0])

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, bytes={len(self.model_bytes)}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"], state["_threads"] = None, 0
        return state


def ort_session(model_bytes: bytes, threads: int | None = None):
    """A CPU `InferenceSession` with every graph optimisation and `threads` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1  # one model at a time: parallelism lives inside the ops
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    axes = {_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings say nothing a user can act on
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[_INPUT], output_names=[_OUTPUT], dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=max(OPSET, 18),
                                    input_names=[_INPUT], output_names=[_OUTPUT],
                                    dynamic_shapes=shapes, external_data=False)
    program.save(str(path), external_data=False)


def _check_export(model: nn.Module, example: torch.Tensor, model_bytes: bytes, dynamic_batch: bool) -> str | None:
    """Run the exported graph at the example's batch size and (if dynamic) at another; None when it matches."""
    sess = ort_session(model_bytes)
    name = sess.get_inputs()[0].name
    sizes = [example.shape[0]] + ([example.shape[0] + 1] if dynamic_batch else [])
    for n in sizes:
        x = example[:1].expand(n, *example.shape[1:]).contiguous() + 0.01 * torch.arange(n).view(-1, 1, 1, 1)
        with torch.inference_mode():
            want = model(x).float()
        got = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
        if got.shape != want.shape:
            return f"output shape {tuple(got.shape)} at batch {n}, torch gives {tuple(want.shape)}"
        err = (got - want).abs().max().item()
        if err > 1e-3 * max(1.0, want.abs().max().item()):
            return f"outputs differ from torch by {err:.3g} at batch {n}"
    return None


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, dynamic_batch: bool = True) -> Path:
    """Write `model` as an ONNX file (opset 17, input "images", output "logits") and return the path.

    The legacy TorchScript exporter is tried first (robust on timm ViTs and plain-Python custom
    modules); if it fails or its graph disagrees with torch (e.g. a batch size frozen into a reshape)
    the dynamo exporter is tried. An `OrtModule` is already a graph: its bytes are written as they are.

    Args:
        model: a float `nn.Module` taking an image batch, or an `OrtModule`.
        example: an image batch of the right shape (its batch size does not matter with `dynamic_batch`).
        path: where to write the file; parent folders are created.
        dynamic_batch: export with a symbolic batch axis so any batch size runs.

    Raises:
        OnnxExportError: no exporter produced a graph that reproduces the model.

    Example:
        >>> export_onnx(model, torch.randn(1, 1, 16, 16), Path(tempfile.mkdtemp()) / "model.onnx").name
        'model.onnx'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, OrtModule):
        path.write_bytes(model.model_bytes)
        return path
    if any(p.dtype not in (torch.float32,) for p in model.parameters()) or is_torch_quantized(model):
        raise OnnxExportError("export_onnx needs a float32 model; export the float model and quantize the ONNX "
                              "graph instead (runtime 'ort_int8'), or pass the OrtModule the build produced")
    was_training = model.training
    model.eval()  # exporting a train-mode graph would bake in dropout; the caller's mode is restored below
    example = example.detach().to(torch.float32)
    problems = []
    try:
        for name, exporter in (("legacy", _export_legacy), ("dynamo", _export_dynamo)):
            try:
                exporter(model, example, path, dynamic_batch)
                problem = _check_export(model, example, path.read_bytes(), dynamic_batch)
            except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the next one
                problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if problem is None:
                return path
            log.info("ONNX %s exporter did not work for %s: %s", name, type(model).__name__, problem)
            problems.append(f"{name} exporter: {problem}")
    finally:
        model.train(was_training)
    path.unlink(missing_ok=True)
    raise OnnxExportError(f"cannot export {type(model).__name__} to ONNX ({'; '.join(problems)}); "
                          "choose runtime 'dynamic_int8', 'bf16' or 'none' for this model, which run it in torch")


def onnx_bytes(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> bytes:
    """`export_onnx` to a temporary file, returning the ONNX bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        return export_onnx(model, example, Path(tmp) / "model.onnx", dynamic_batch).read_bytes()


def quantize_onnx_dynamic(model_bytes: bytes, per_channel: bool = False) -> bytes:
    """ONNX Runtime dynamic quantization: int8 weights (MatMul/Gemm), activations quantized per run.

    Per-tensor weights by default: on x86 ORT's per-tensor dynamic MatMul kernel is about twice as
    fast as the per-channel one (measured on deit_small), at a small accuracy cost.
    """
    # heavy (0.7 s on top of import vitshrink; onnxruntime.quantization imports onnx), only quantization needs them
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(onnx.load_from_string(model_bytes), out, weight_type=QuantType.QInt8,
                         per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm"])
        return out.read_bytes()


def quantize_onnx_static(model_bytes: bytes, calibration: torch.Tensor, qdq: bool = False,
                         batch_size: int = 8) -> bytes:
    """ONNX Runtime static quantization calibrated (min/max) on `calibration` images.

    Weights are int8 per channel, activations uint8 per tensor with fixed scales. `qdq=False` writes
    fused QLinear* operators (the fastest form for ORT's CPU provider); `qdq=True` writes
    QuantizeLinear/DequantizeLinear pairs, the portable form other runtimes and accelerators expect.
    """
    # heavy (0.7 s on top of import vitshrink; onnxruntime.quantization imports onnx), only quantization needs them
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            batches = calibration.detach().float().split(batch_size)
            self._it = iter([{name: b.contiguous().numpy()} for b in batches])

        def get_next(self):
            return next(self._it, None)

    proto = onnx.load_from_string(model_bytes)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        quantize_static(proto, out, _Reader(proto.graph.input[0].name),
                        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                        op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"MatMulConstBOnly": True})
        return out.read_bytes()


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence ORT's quantizer: it logs a pre-processing hint on the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


__all__ = ["OPSET", "OnnxExportError", "OrtModule", "export_onnx", "onnx_bytes", "ort_session",
           "quantize_onnx_dynamic", "quantize_onnx_static"]
