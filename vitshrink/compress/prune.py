"""Structured pruning of a timm ViT: whole attention heads and whole MLP hidden units are removed,
so the tensors really shrink (the `qkv` rows and `proj` columns of a head, the `fc1` rows and `fc2`
columns of a unit).

Importance scores (``config.prune_score``):

- ``magnitude``: L2 norm of the weights that belong to the head / unit (Han et al., "Learning both
  Weights and Connections for Efficient Neural Networks", NeurIPS 2015, applied per structure).
- ``taylor``: first-order Taylor estimate of the loss change, ``sum |w * dL/dw|`` over the head's /
  unit's weights (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019),
  with cross-entropy on labelled calibration images.
- ``activation``: mean L2 norm of the head's output / unit's activation on calibration images
  (the output-norm criterion used for head pruning by Michel et al., "Are Sixteen Heads Really
  Better than One?", NeurIPS 2019, and for channels by Hu et al., "Network Trimming", 2016).

Example:
    >>> cfg = CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}})
    >>> small = prune_vit(model, cfg, ctx)
    >>> ctx.notes["heads_kept"]
    [[1], [0]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from ..models import copy_model
from ..spaces import CompressionConfig, ConfigError
from ..techniques.prune import keep_count, prune_problem, vit_blocks
from ..techniques.prune import PruneConfig
from ._registry import BuildContext, register_handler

# Calibration images for the data-driven scores, in batches: enough for a stable ranking, cheap on a CPU.
CALIB_IMAGES = 128
CALIB_BATCH = 32


def _head_rows(attn: Attention, heads: list[int]) -> torch.Tensor:
    """Rows of the fused qkv weight that belong to `heads` (layout: [q | k | v], each head-major)."""
    h, d = attn.num_heads, attn.head_dim
    return torch.tensor([p * h * d + hd * d + j for p in range(3) for hd in heads for j in range(d)], dtype=torch.long)


def _head_cols(attn: Attention, heads: list[int]) -> torch.Tensor:
    d = attn.head_dim
    return torch.tensor([hd * d + j for hd in heads for j in range(d)], dtype=torch.long)


def _slice_linear(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding only `rows` (outputs) and `cols` (inputs) of `layer`."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    # skip_init: the weights are overwritten at once, a random init would be wasted work
    out = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    out.train(layer.training)
    return out


def prune_structure(model: nn.Module, heads_kept: list[list[int]], mlp_kept: list[list[int]]) -> nn.Module:
    """A copy of `model` keeping, in block i, the heads `heads_kept[i]` and MLP units `mlp_kept[i]`
    (original indices); everything else is sliced out of the tensors.

    Keeping every head and unit in their original order gives a model with identical outputs.

    Example:
        >>> small = prune_structure(tiny_vit, [[1], [0, 1]], [list(range(32)), [0, 5]])
        >>> small.blocks[0].attn.qkv.out_features, small.blocks[1].mlp.fc1.out_features
        (48, 2)
    """
    new = copy_model(model)
    blocks = vit_blocks(new)
    if len(heads_kept) != len(blocks) or len(mlp_kept) != len(blocks):
        raise ValueError(f"need one list of heads and of MLP units per block ({len(blocks)} blocks)")
    for i, blk in enumerate(blocks):
        attn, mlp = blk.attn, blk.mlp
        heads = [int(h) for h in heads_kept[i]]
        if not heads or len(set(heads)) != len(heads) or not all(0 <= h < attn.num_heads for h in heads):
            raise ValueError(f"block {i}: heads to keep {heads} must be distinct indices in [0, {attn.num_heads})")
        if heads != list(range(attn.num_heads)):
            if not isinstance(attn.norm, nn.Identity):
                # a LayerNorm over all heads mixes them: removing one changes the others' outputs
                raise ConfigError(f"block {i}: attention with scale_norm cannot have heads pruned; set prune.heads=0")
            attn.qkv = _slice_linear(attn.qkv, rows=_head_rows(attn, heads))
            if attn.gate is not None:
                attn.gate = _slice_linear(attn.gate, rows=_head_cols(attn, heads))
            attn.proj = _slice_linear(attn.proj, cols=_head_cols(attn, heads))
            attn.num_heads = len(heads)
            attn.attn_dim = len(heads) * attn.head_dim
        units = torch.tensor([int(u) for u in mlp_kept[i]], dtype=torch.long)
        hidden = mlp.fc1.out_features
        if len(units) == 0 or len(set(units.tolist())) != len(units) or units.min() < 0 or units.max() >= hidden:
            raise ValueError(f"block {i}: MLP units to keep must be distinct indices in [0, {hidden})")
        if units.tolist() != list(range(hidden)):
            if not isinstance(mlp.norm, nn.Identity):
                raise ConfigError(f"block {i}: an MLP with a hidden-layer norm cannot be pruned; set prune.mlp=0")
            mlp.fc1 = _slice_linear(mlp.fc1, rows=units)
            mlp.fc2 = _slice_linear(mlp.fc2, cols=units)
    return new


def calibration_batch(ctx: BuildContext, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of `ctx.calibration(n)` together with their true labels (Taylor scores need a loss)."""
    # The same seeded permutation as BuildContext.calibration; a test checks the images agree.
    gen = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(ctx.data.train), generator=gen)[:n]
    return ctx.data.train.images(idx), ctx.data.train.labels[idx]


def _group_sum(values: torch.Tensor, groups: int) -> torch.Tensor:
    return values.reshape(groups, -1).sum(1)


def _weight_stats(blk: nn.Module, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head and per MLP unit, the sum of `fn(param_name, tensor)` over the entries they own."""
    attn, mlp = blk.attn, blk.mlp
    h, d = attn.num_heads, attn.head_dim

    def per_head_rows(t: torch.Tensor) -> torch.Tensor:  # (3*h*d, ...) -> (h,)
        return t.reshape(3, h, d, -1).sum((0, 2, 3))

    head = per_head_rows(fn("attn.qkv.weight", attn.qkv.weight))
    if attn.qkv.bias is not None:
        head = head + per_head_rows(fn("attn.qkv.bias", attn.qkv.bias))
    head = head + _group_sum(fn("attn.proj.weight", attn.proj.weight).sum(0), h)
    if attn.gate is not None:
        head = head + _group_sum(fn("attn.gate.weight", attn.gate.weight).sum(1), h)
    unit = fn("mlp.fc1.weight", mlp.fc1.weight).sum(1) + fn("mlp.fc2.weight", mlp.fc2.weight).sum(0)
    if mlp.fc1.bias is not None:
        unit = unit + fn("mlp.fc1.bias", mlp.fc1.bias)
    return head, unit


def _magnitude_scores(blocks: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for blk in blocks:
        head_sq, unit_sq = _weight_stats(blk, lambda _name, w: w.detach().double().pow(2))
        out.append((head_sq.sqrt(), unit_sq.sqrt()))
    return out


def _taylor_scores(model: nn.Module, blocks: list[nn.Module], ctx: BuildContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = calibration_batch(ctx, CALIB_IMAGES)
    params = {f"{i}.{n}": p for i, blk in enumerate(blocks) for n, p in blk.named_parameters()
              if n.startswith(("attn.qkv", "attn.proj", "attn.gate", "mlp.fc1", "mlp.fc2"))}
    names = list(params)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    saved = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    try:
        for s in range(0, len(x), CALIB_BATCH):
            loss = F.cross_entropy(_logits(model(x[s : s + CALIB_BATCH])), y[s : s + CALIB_BATCH], reduction="sum")
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            for n, g in zip(names, grads):
                acc[n] += g.double()
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n])
    out = []
    for i, blk in enumerate(blocks):
        # |w * dL/dw| with the gradient of the loss summed over the calibration set
        out.append(_weight_stats(blk, lambda name, w, i=i: (w.detach().double() * acc[f"{i}.{name}"]).abs()))
    return out


def _logits(out) -> torch.Tensor:
    # distilled DeiT returns (cls, dist) logits in training mode; score on their mean as timm's eval does
    return (out[0] + out[1]) / 2 if isinstance(out, tuple) else out


@torch.no_grad()
def _activation_scores(model: nn.Module, blocks: list[nn.Module], ctx: BuildContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = ctx.calibration(CALIB_IMAGES)
    sums = [[torch.zeros(b.attn.num_heads, dtype=torch.float64), torch.zeros(b.mlp.fc1.out_features, dtype=torch.float64)]
            for b in blocks]
    handles = []

    def hook_heads(i: int, h: int):
        def pre(_mod, args):  # proj's input is the concatenated per-head outputs, (B, N, h * d)
            a = args[0].double()
            sums[i][0] += a.reshape(a.shape[0], a.shape[1], h, -1).pow(2).sum((1, 3)).sqrt().sum(0)
        return pre

    def hook_units(i: int):
        def pre(_mod, args):  # fc2's input is the hidden activation, (B, N, hidden)
            sums[i][1] += args[0].double().pow(2).sum(1).sqrt().sum(0)
        return pre

    try:
        for i, blk in enumerate(blocks):
            handles.append(blk.attn.proj.register_forward_pre_hook(hook_heads(i, blk.attn.num_heads)))
            handles.append(blk.mlp.fc2.register_forward_pre_hook(hook_units(i)))
        for s in range(0, len(x), CALIB_BATCH):
            model(x[s : s + CALIB_BATCH])
    finally:
        for handle in handles:
            handle.remove()
    return [(head / len(x), unit / len(x)) for head, unit in sums]


def importance_scores(model: nn.Module, score: str, ctx: BuildContext | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, (head scores, MLP unit scores) of `model` by `score`; higher means keep.

    `taylor` and `activation` run `model` (in eval mode) on calibration images from `ctx`;
    `model` is not changed.

    Example:
        >>> heads, units = importance_scores(tiny_vit, "magnitude")[0]
        >>> heads.shape, units.shape
        (torch.Size([2]), torch.Size([64]))
    """
    blocks = vit_blocks(model)
    if score == "magnitude":
        return _magnitude_scores(blocks)
    if ctx is None:
        raise ValueError(f"prune.score={score!r} needs calibration data: pass a BuildContext")
    work = copy_model(model).eval()  # gradients and hooks go on a copy, never on the caller's model
    work_blocks = list(work.blocks)
    if score == "taylor":
        return _taylor_scores(work, work_blocks, ctx)
    if score == "activation":
        return _activation_scores(work, work_blocks, ctx)
    raise ConfigError(f"prune.score={score!r} is not one of magnitude, taylor, activation")


def _top(scores: torch.Tensor, keep: int) -> list[int]:
    # stable sort: ties break toward the lower index, so the choice is deterministic
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    return sorted(int(i) for i in order)


@register_handler(PruneConfig)
def prune_vit(model: nn.Module, config: CompressionConfig, ctx: BuildContext | None) -> nn.Module:
    """Remove the `prune_heads` fraction of attention heads and `prune_mlp` fraction of MLP hidden units
    with the lowest `prune_score` in every block (at least one of each is kept).

    Returns a new model; at 0 % pruning it is an exact copy. Notes `heads_kept` (original head indices
    per block), `mlp_hidden` (units per block) and `prune_score`.

    Example:
        >>> small = prune_vit(tiny_vit, CompressionConfig({"prune": {"mlp": 0.5}}), ctx)
        >>> small.blocks[0].mlp.fc1.out_features
        32
    """
    blocks = vit_blocks(model)
    heads_kept = [list(range(b.attn.num_heads)) for b in blocks]
    mlp_kept = [list(range(b.mlp.fc1.out_features)) for b in blocks]
    s = config.get("prune") or PruneConfig()
    if s.heads > 0 or s.mlp > 0:
        scores = importance_scores(model, s.score, ctx)
        for i, blk in enumerate(blocks):
            if s.heads > 0:
                heads_kept[i] = _top(scores[i][0], keep_count(blk.attn.num_heads, s.heads))
            if s.mlp > 0:
                mlp_kept[i] = _top(scores[i][1], keep_count(blk.mlp.fc1.out_features, s.mlp))
    new = prune_structure(model, heads_kept, mlp_kept)
    if ctx is not None:
        ctx.note(heads_kept=heads_kept, mlp_hidden=[len(u) for u in mlp_kept], prune_score=s.score)
    return new


__all__ = ["CALIB_IMAGES", "calibration_batch", "importance_scores", "keep_count", "prune_problem", "prune_structure",
           "prune_vit"]
