"""ONNX Runtime with fused attention: runtimes ``ort_fused_fp32`` and ``ort_fused_int8``.

timm's `Attention` computes q, k and v with one packed `qkv` Linear, then reshapes, permutes and
unbinds them. ONNX Runtime's transformer fusions look for BERT's three separate projections, so on
timm's export they fuse no attention at all (`optimize_model(model_type="vit")` finds 0 Attention
nodes) and every block runs as a dozen small MatMul / Transpose / Reshape / Softmax kernels.

Here the graph is written fused at export instead: each plain timm `Attention` of a timm `Block`
is exported as one ``com.microsoft.Attention`` node (its packed qkv weight and bias as the node's
weights, its head count and scale as attributes), followed by the output projection as before.
ONNX Runtime's CPU provider runs that node as one kernel; its dynamic quantizer turns it into
``QAttention`` (int8 qkv projection and attention in one kernel), and the other MatMuls into
``DynamicQuantizeMatMul``. Attention the node cannot express (Nystrom landmarks, ToMe's
size-weighted attention, q/k norms, gates) is exported as it is; the notes count the fused blocks.

The graph uses a contrib operator: it runs in ONNX Runtime (which is what is measured and exported),
not in other ONNX runtimes.

Example:
    >>> fused = fused_onnx_bytes(vit, example)
    >>> count_fused_attention(fused) == len(vit.blocks)
    True
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path

import torch
from timm.models.vision_transformer import Attention, Block
from torch import nn

from ..spaces import CompressionConfig
from ..techniques import deployment_of
from ..techniques.ort_fused import OrtFusedFp32Config, OrtFusedInt8Config
from ._registry import BuildContext, Export, register_export, register_handler
from .onnx_runtime import OPSET, OnnxExportError, OrtModule, _check_export, _quiet_quantizer
from .quantize import _ORT_FLOAT, ORT_INT8_EXPORT, deploy, register_quant_problem

MODES = ("ort_fused_fp32", "ort_fused_int8")
_CONTRIB = "com.microsoft"


class _AttentionOp(torch.autograd.Function):
    """Multi-head self-attention from a packed qkv projection; exported as ``com.microsoft.Attention``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                scale: float) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (x @ weight + bias).reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, -1)

    @staticmethod
    def symbolic(g, x, weight, bias, num_heads, scale):
        out = g.op(f"{_CONTRIB}::Attention", x, weight, bias, num_heads_i=num_heads, scale_f=scale)
        sizes, w_sizes = x.type().varyingSizes(), weight.type().varyingSizes()
        if sizes is not None and w_sizes is not None:  # the exporter cannot infer a contrib op's shape
            out.setType(x.type().with_sizes(sizes[:-1] + [w_sizes[1] // 3]))
        return out


class FusedAttention(nn.Module):
    """A timm `Attention` (packed qkv, no q/k norm, no gate) as one fused attention operator and its
    output projection: the same function, exported as ``com.microsoft.Attention`` + MatMul."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.num_heads, self.scale = int(attn.num_heads), float(attn.scale)
        weight = attn.qkv.weight.detach()
        bias = attn.qkv.bias.detach() if attn.qkv.bias is not None else torch.zeros(weight.shape[0])
        self.register_buffer("weight", weight.t().contiguous())  # the operator's (in, 3 * hidden) layout
        self.register_buffer("bias", bias.clone())
        self.proj = attn.proj

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return self.proj(_AttentionOp.apply(x, self.weight, self.bias, self.num_heads, self.scale))


def fusable(attn: nn.Module) -> bool:
    """Whether `attn` is a timm `Attention` the fused operator computes exactly."""
    return (type(attn) is Attention and not attn.training and getattr(attn, "gate", None) is None
            and all(isinstance(getattr(attn, m, nn.Identity()), nn.Identity) for m in ("q_norm", "k_norm", "norm"))
            and attn.qkv.weight.shape[0] == 3 * attn.num_heads * attn.head_dim)


def with_fused_attention(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `model` whose fusable attention modules (in timm `Block`s) are `FusedAttention`;
    returns the copy and how many were fused. `model` is left alone."""
    fused = copy.deepcopy(model).eval()
    count = 0
    for module in fused.modules():
        if type(module) is Block and fusable(module.attn):
            module.attn = FusedAttention(module.attn)
            count += 1
    return fused, count


def fused_onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """`model` as an ONNX graph (dynamic batch) whose fusable attention is ``com.microsoft.Attention``,
    checked against `model` in ONNX Runtime at two batch sizes.

    Raises:
        OnnxExportError: the exporter failed, or the graph's outputs differ from the model's.
    """
    fused, _ = with_fused_attention(model)
    buf = io.BytesIO()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(fused, (example.detach().float(),), buf, dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["logits"], dynamic_axes=axes,
                              do_constant_folding=True, custom_opsets={_CONTRIB: 1})
        problem = _check_export(model.eval(), example.detach().float(), buf.getvalue(), dynamic_batch=True)
    except Exception as exc:  # noqa: BLE001 - re-raised as the one error the quantize stage reports
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if problem:
        raise OnnxExportError(f"cannot export {type(model).__name__} with fused attention ({problem}); choose "
                              "runtime 'ort_fp32' or 'ort_int8' for this model")
    return buf.getvalue()


def quantize_fused_dynamic(model_bytes: bytes) -> bytes:
    """ONNX Runtime dynamic int8 quantization of a fused graph: Attention -> QAttention, MatMul/Gemm ->
    int8 weights (per tensor, as `quantize_onnx_dynamic`)."""
    # heavy (0.7 s on top of import vitshrink; onnxruntime.quantization imports onnx), only quantization needs them
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        # ONNX's shape inference knows no contrib operator: the tensors after one are float
        quantize_dynamic(onnx.load_from_string(model_bytes), out, weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return out.read_bytes()


def count_fused_attention(model_bytes: bytes) -> int:
    """How many fused attention operators (Attention or QAttention) a graph holds."""
    import onnx  # heavy (0.7 s on top of import vitshrink), only fused ONNX graphs need it

    graph = onnx.load_from_string(model_bytes).graph
    return sum(n.domain == _CONTRIB and n.op_type in ("Attention", "QAttention") for n in graph.node)


def to_fused_ort(model: nn.Module, mode: str, example: torch.Tensor) -> OrtModule:
    """`model` in ONNX Runtime with fused attention, in fp32 (``ort_fused_fp32``) or dynamic int8
    (``ort_fused_int8``); `model` is left alone."""
    if mode not in MODES:
        raise ValueError(f"unknown fused ONNX Runtime mode {mode!r}; modes are {', '.join(MODES)}")
    graph = fused_onnx_bytes(model, example)
    if mode == "ort_fused_fp32":
        return OrtModule(graph, kind="fused_fp32")
    return OrtModule(quantize_fused_dynamic(graph), kind="fused_int8_dynamic")


def fused_problem(mode: str, target_kind: str) -> str | None:
    """Fused ONNX Runtime graphs run in CPU sessions only (see `quant_problem`)."""
    if mode in MODES and target_kind == "cuda":
        return (f"runtime={mode!r} runs on the CPU only (an ONNX Runtime CPU session) but the latency target is a "
                "CUDA device; search quant none or bf16 there, or measure on a cpu:N target")
    return None


register_quant_problem(fused_problem)


register_export("ort_fused_fp32", Export(torchscript=_ORT_FLOAT))
register_export("ort_fused_int8", ORT_INT8_EXPORT)


@register_handler(OrtFusedFp32Config, OrtFusedInt8Config)
def ort_fused(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """Run the model in ONNX Runtime with fused attention, fp32 or dynamic int8 (`config.quant`); notes
    as the quantize stage does, and the number of attention operators fused."""
    deployed = to_fused_ort(model, deployment_of(config), ctx.example(4))
    return deploy(model, deployed, config, ctx, fused_attention=count_fused_attention(deployed.model_bytes))

__all__ = ["MODES", "FusedAttention", "count_fused_attention", "fusable", "fused_onnx_bytes", "fused_problem",
           "quantize_fused_dynamic", "to_fused_ort", "with_fused_attention"]
