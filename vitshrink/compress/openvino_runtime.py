"""OpenVINO as a deployment runtime: runtimes ``openvino_fp32`` and ``openvino_int8``.

The float model is exported to ONNX (`onnx_bytes`, the exporter ONNX Runtime modes use, checked
against torch), read by OpenVINO and kept as IR bytes (xml + bin, float32 weights). ``openvino_int8``
is NNCF's post-training quantization of that model (``model_type=TRANSFORMER``: int8 weights and
activations for matmuls, calibrated on `calib_size` seeded training images, as ``static_int8`` is).
`OpenVinoModule` runs the compiled model on the CPU behind the `nn.Module` interface, with
``INFERENCE_NUM_THREADS`` = torch's thread count, so accuracy and latency measure it as any model.

Needs the optional extra: ``pip install 'vitshrink[openvino]'`` (openvino, nncf). Without it the
mode names still exist (stored studies stay readable) and a search that asks for them is refused
before its study is created (`quant_problem`).

Example (needs the extra):
    >>> ov_model = to_openvino(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10)),
    ...                        torch.randn(2, 3, 4, 4))
    >>> ov_model(torch.randn(5, 3, 4, 4)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..spaces import CompressionConfig, ConfigError
from ..techniques.openvino import OpenvinoFp32Config, OpenvinoInt8Config
from ._registry import BuildContext, Export, register_export, register_handler
from ._signal_stack import keeps_signal_stack
from .onnx_runtime import onnx_bytes
from .quantize import deploy, register_quant_problem

OPENVINO_MODES = ("openvino_fp32", "openvino_int8")
INSTALL = "pip install 'vitshrink[openvino]'"


def missing_extra(mode: str) -> str | None:
    """The sentence for an OpenVINO `mode` whose packages are not installed, or None."""
    packages = ("openvino", "nncf") if mode == "openvino_int8" else ("openvino",)
    for name in packages:
        try:
            __import__(name)
        except ImportError:
            return f"{mode} needs the optional extra: {INSTALL}"
    return None


def openvino_problem(mode: str, target_kind: str) -> str | None:
    """Why `mode` cannot be measured on a `target_kind` target (see `quant_problem`), or None."""
    if mode not in OPENVINO_MODES:
        return None
    if target_kind == "cuda":
        return (f"runtime={mode!r} runs on the CPU only (an OpenVINO CPU model) but the latency target is a CUDA "
                "device; search quant none or bf16 there, or measure on a cpu:N target")
    return missing_extra(mode)


register_quant_problem(openvino_problem)


class OpenVinoModule(nn.Module):
    """An OpenVINO IR (xml + float32/int8 weights) compiled for the CPU, behind the `nn.Module` interface.

    The compiled model is created lazily and re-created when `torch.get_num_threads()` changes (the
    latency protocol's thread setting). Copies and pickles carry only the IR bytes. `runtime` names
    the runtime, its version and a digest of the graph's operators and shapes (not its weights): the
    latency cache keys on it (`STRUCTURAL_ATTRIBUTES`), as on an ONNX Runtime model's graph.

    Args:
        xml: the IR's model description.
        weights: the IR's weights (the ``.bin`` file).
        kind: "fp32" or "int8", kept for reports.
    """

    structural_attributes = ('runtime',)  # the runtime, its version and the graph's digest: read by the structural signature

    def __init__(self, xml: bytes, weights: bytes, kind: str = "fp32") -> None:
        super().__init__()
        import openvino as ov

        self.xml, self.weights, self.kind = bytes(xml), bytes(weights), kind
        digest = hashlib.sha256(json.dumps(ir_structure(self.xml)).encode()).hexdigest()[:16]
        self.runtime = ("openvino", ov.__version__, digest)
        self._compiled: Any = None
        self._threads = 0

    def compiled(self):
        """The compiled CPU model, built for the current torch thread count."""
        threads = torch.get_num_threads()
        if self._compiled is None or self._threads != threads:
            import openvino as ov

            core = ov.Core()
            model = core.read_model(self.xml, ov.Tensor(np.frombuffer(self.weights, dtype=np.uint8)))
            # one stream, latency hint: one image at a time, parallelism inside the ops (as ORT's sessions);
            # f32 precision: on CPUs with bf16 units OpenVINO would otherwise run float ops in bf16
            config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": "f32"}
            with keeps_signal_stack():  # OpenVINO swaps this thread's signal stack (_signal_stack.py)
                self._compiled = core.compile_model(model, "CPU", config)
            self._threads = threads
        return self._compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled()(x.detach().to(torch.float32).contiguous().numpy())
        return torch.from_numpy(out[0].copy())

    def artifact_bytes(self) -> bytes:
        """What is deployed: the IR's xml and weights (their sizes add up to the two files')."""
        return self.xml + self.weights

    def save_ir(self, path: str | Path) -> Path:
        """Write the IR as ``path`` (.xml) and the weights beside it (.bin); OpenVINO reads it with
        ``openvino.Core().read_model(path)``."""
        path = Path(path).with_suffix(".xml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.xml)
        path.with_suffix(".bin").write_bytes(self.weights)
        return path

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, bytes={len(self.xml) + len(self.weights)}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"], state["_threads"] = None, 0
        return state


def ir_structure(xml: bytes) -> list[Any]:
    """Operators, their attributes and port shapes/types, in graph order: not the weights.

    Constants are left out: the exporter shares equal-valued ones (the all-zero biases of a fresh
    model), so their number depends on the weights; the shape and type of each constant an operator
    reads are on that operator's input port."""
    rows = []
    for layer in ET.fromstring(xml).iter("layer"):
        if layer.get("type") == "Const":
            continue
        data = layer.find("data")
        attrs = dict(data.attrib) if data is not None else {}
        ports = [[p.get("precision"), [d.text for d in p.iter("dim")]] for p in layer.iter("port")]
        rows.append([layer.get("type"), layer.get("version"), sorted(attrs.items()), ports])
    return rows


def _ir_bytes(model: Any) -> tuple[bytes, bytes]:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)  # fp16 weights would change fp32's numbers
        return path.read_bytes(), path.with_suffix(".bin").read_bytes()


def to_openvino(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor | None = None,
                batch_size: int = 8) -> OpenVinoModule:
    """`model` (float32) as an OpenVINO model: float32, or NNCF int8 when `calibration` images are given.

    Raises:
        ConfigError: openvino (or nncf, for int8) is not installed.
    """
    mode = "openvino_int8" if calibration is not None else "openvino_fp32"
    if problem := missing_extra(mode):
        raise ConfigError(problem)
    import openvino as ov

    ov_model = ov.Core().read_model(onnx_bytes(model, example))
    if calibration is None:
        return OpenVinoModule(*_ir_bytes(ov_model), kind="fp32")
    import nncf

    nncf.set_log_level(logging.ERROR)
    batches = [b.contiguous().numpy() for b in calibration.detach().float().split(batch_size)]
    # NNCF draws progress bars on stdout, beside ours; it compiles the model to collect statistics
    with contextlib.redirect_stdout(io.StringIO()), keeps_signal_stack():
        quantized = nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(calibration),
                                  model_type=nncf.ModelType.TRANSFORMER)
    return OpenVinoModule(*_ir_bytes(quantized), kind="int8")


register_export("openvino_fp32", Export(onnx_what="the float32 ONNX graph the trial ran in OpenVINO",
                                        torchscript="the float32 model (the trial ran the same graph in OpenVINO)"))
_NO_FILE = ("is quantized by OpenVINO (NNCF int8) and has no {fmt} form; write its OpenVINO IR with "
            "open_study(...).load_model(N).save_ir('model.xml'), or export --format safetensors for its float weights")
register_export("openvino_int8", Export(refuse={fmt: _NO_FILE.format(fmt=fmt) for fmt in ("onnx", "torchscript")}))


@register_handler(OpenvinoFp32Config, OpenvinoInt8Config)
def openvino(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """Run the model in OpenVINO (``openvino_fp32``), or NNCF int8 post-training quantization calibrated
    on `config.calib_size` seeded training images (``openvino_int8``); notes as the quantize stage does."""
    int8 = config.get("openvino_int8")
    calibration = ctx.calibration(int8.calib_size) if int8 is not None else None
    return deploy(model, to_openvino(model, ctx.example(4), calibration), config, ctx, runtime="openvino")

__all__ = ["INSTALL", "OPENVINO_MODES", "OpenVinoModule", "ir_structure", "missing_extra", "openvino_problem",
           "to_openvino"]
