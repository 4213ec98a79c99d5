"""Token reduction: ToMe token merging (Bolya et al. 2023) and patch dropping by cls attention.

Both shrink the sequence inside each block, between attention and MLP (where ToMe and EViT do):

- ToMe merges r tokens per block by bipartite soft matching on the attention keys (averaged over
  heads): patch tokens alternate into sets A and B, each A token's most similar B token is an edge,
  the r strongest edges are merged by size-weighted averaging, and later attention adds log(size)
  to the logits of every key (proportional attention). The prefix tokens (cls, dist, registers:
  the model's `num_prefix_tokens`) are never merged.
- Patch dropping keeps, at the blocks in `token_drop_at`, the `1 - token_drop` fraction of patch
  tokens that the cls token attends to most (its attention in that block, averaged over heads).

Every count is a function of the token count alone (never of the data), so sizes are static for
a given input size: the model exports to ONNX with fixed shapes and its latency is predictable.
The cls token stays at index 0, so `global_pool='token'` heads work unchanged; with
`global_pool='avg'` the remaining tokens are averaged plainly (not size-weighted), as in the
official ToMe timm patch.

Example:
    >>> from vitshrink.spaces import CompressionConfig
    >>> new = reduce_tokens(vit, CompressionConfig({"tome": {"r": 4}}), ctx)
    >>> ctx.notes["tokens_per_block"]
    [13, 9]
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..spaces import CompressionConfig, ConfigError
from ..techniques import chosen_indices
from ..techniques.patch_drop import token_problem
from ..techniques.tome import TomeConfig
from ..techniques.patch_drop import PatchDropConfig
from ._registry import BuildContext, register_handler
from .lowrank import NystromAttention, num_tokens

AttendResult = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def softmax_attend(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None = None,
                   cls_attention: bool = False) -> AttendResult:
    """Exact softmax attention of a timm-style `Attention`, with what token reduction needs.

    Returns the output, the keys averaged over heads (B, N, head_dim, ToMe's metric) and, if asked,
    the cls token's attention to every token averaged over heads (B, N). `size` (B, N, 1) adds
    log(size) to the key logits (ToMe's proportional attention).

    Example:
        >>> out, keys, cls = softmax_attend(vit.blocks[0].attn, torch.randn(1, 17, 32), None, True)
    """
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if size is not None:
        logits = logits + size[..., 0].log()[:, None, None, :]
    weights = logits.softmax(dim=-1)
    cls_attn = weights[:, :, 0].mean(1) if cls_attention else None
    out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(b, n, attn.attn_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), k.mean(1), cls_attn


def attend(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None, cls_attention: bool) -> AttendResult:
    """Dispatch to `NystromAttention.attend` or to `softmax_attend` for timm attention."""
    if isinstance(attn, NystromAttention):
        return attn.attend(x, size, cls_attention)
    return softmax_attend(attn, x, size, cls_attention)


def merge_count(n: int, prefix: int, r: int) -> int:
    """Tokens ToMe can merge among n: at most r, and at most |B| = (n - prefix) // 2, which keeps
    at least prefix + 1 tokens."""
    return max(0, min(r, (n - prefix) // 2))


def keep_count(n: int, prefix: int, drop: float) -> int:
    """Patch tokens kept when dropping the `drop` fraction of the n - prefix patches (at least one)."""
    patches = n - prefix
    return max(1, min(patches, int(round((1.0 - drop) * patches))))


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching: merge r patch tokens into their most similar partners.

    Patches alternate into A (even) and B (odd); the r A tokens with the highest cosine similarity
    to some B token are averaged into it, weighted by size. Returns [prefix, unmerged A in order, B]
    and the new sizes. Only gathers and a scatter-add: exportable, shapes fixed by (N, r).

    Example:
        >>> x, s = bipartite_merge(torch.randn(1, 17, 8), torch.ones(1, 17, 1), torch.randn(1, 17, 4), 3, 1)
        >>> x.shape, float(s.sum())
        (torch.Size([1, 14, 8]), 17.0)
    """
    metric = F.normalize(metric[:, prefix:].detach(), dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|)
    node_max, node_idx = scores.max(dim=-1)
    na = node_max.shape[-1]
    # topk rather than argsort/sort: it maps to ONNX TopK in both exporters
    order = node_max.topk(na, dim=-1).indices[..., None]
    unm_idx = order[:, r:].topk(na - r, dim=1, largest=False).values  # keep the spatial order of what stays
    src_idx = order[:, :r]
    dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)
    # carry size in the last channel so one gather/scatter moves both
    y = torch.cat([x[:, prefix:] * size[:, prefix:], size[:, prefix:]], dim=-1)
    c = y.shape[-1]
    ya, yb = y[:, ::2], y[:, 1::2]
    unm = ya.gather(dim=1, index=unm_idx.expand(-1, -1, c))
    src = ya.gather(dim=1, index=src_idx.expand(-1, -1, c))
    yb = yb.scatter_add(1, dst_idx.expand(-1, -1, c), src)
    y = torch.cat([unm, yb], dim=1)
    new_size = y[..., -1:]
    return torch.cat([x[:, :prefix], y[..., :-1] / new_size], dim=1), torch.cat([size[:, :prefix], new_size], dim=1)


def drop_patches(x: torch.Tensor, size: torch.Tensor | None, cls_attn: torch.Tensor, keep: int, prefix: int
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Keep the prefix and the `keep` patch tokens with the most cls attention, in their order.

    Returns the tokens, their sizes (None stays None) and the kept indices (B, prefix + keep).
    """
    top = cls_attn[:, prefix:].topk(keep, dim=-1).indices
    top = top.topk(keep, dim=-1, largest=False).values + prefix  # ascending: keep the spatial order
    lead = torch.arange(prefix, device=x.device).expand(x.shape[0], prefix)
    idx = torch.cat([lead, top], dim=1)
    x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
    if size is not None:
        size = size.gather(1, idx[..., None])
    return x, size, idx


class ToMeBlock(nn.Module):
    """A timm `Block` that merges `r` tokens (ToMe) and/or drops the `drop` fraction of patches
    between its attention and its MLP; `forward(x, size) -> (x, size)`.

    It holds the block's own submodules under the same names (norm1, attn, ls1, ..., mlp), so the
    state_dict keys are those of the original block. Works with timm `Attention` and with
    `NystromAttention`. While no token has been merged (`size is None`) and this block reduces
    nothing, it calls the attention module itself, so it is exact at r = 0, drop = 0.

    Example:
        >>> blk = ToMeBlock(vit.blocks[0], r=4, drop=0.0, prefix=1)
        >>> y, size = blk(torch.randn(2, 17, 32))
        >>> y.shape
        torch.Size([2, 13, 32])
    """

    structural_attributes = ('r', 'drop', 'prefix')  # what the structural signature reads besides shapes

    def __init__(self, block: nn.Module, r: int, drop: float, prefix: int) -> None:
        super().__init__()
        for name in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            if not hasattr(block, name):
                raise ConfigError(f"token reduction needs timm ViT blocks; {type(block).__name__} has no {name}")
            setattr(self, name, getattr(block, name))
        needed = ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop", "num_heads", "head_dim", "attn_dim", "scale")
        if not isinstance(self.attn, NystromAttention) and not all(hasattr(self.attn, a) for a in needed):
            raise ConfigError(f"token reduction cannot read keys from {type(self.attn).__name__}; it supports timm "
                              "Attention and NystromAttention")
        self.r, self.drop, self.prefix = r, drop, prefix

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = int(x.shape[1])  # counts come from the shape only: static for a given input size
        r = merge_count(n, self.prefix, self.r)
        keep = keep_count(n, self.prefix, self.drop) if self.drop > 0 else n - self.prefix
        h = self.norm1(x)
        if size is None and r == 0 and keep == n - self.prefix:
            out, metric, cls_attn = self.attn(h), None, None
        else:
            out, metric, cls_attn = attend(self.attn, h, size, cls_attention=keep < n - self.prefix)
        x = x + self.drop_path1(self.ls1(out))
        if keep < n - self.prefix:
            x, size, idx = drop_patches(x, size, cls_attn, keep, self.prefix)
            metric = metric.gather(1, idx[..., None].expand(-1, -1, metric.shape[-1]))
        r = merge_count(int(x.shape[1]), self.prefix, self.r)
        if r > 0:
            if size is None:
                size = torch.ones_like(x[..., :1])
            x, size = bipartite_merge(x, size, metric, r, self.prefix)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, size

    def extra_repr(self) -> str:
        return f"r={self.r}, drop={self.drop}, prefix={self.prefix}"


class TokenReducedBlocks(nn.Sequential):
    """The model's `blocks`, threading ToMe token sizes from one `ToMeBlock` to the next.

    An `nn.Sequential`, so `model.blocks[i]` and the state_dict keys `blocks.{i}.*` are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = None
        for blk in self:
            x, size = blk(x, size)
        return x


def token_plan(n: int, prefix: int, depth: int, r: int, drop: float, drop_at: set[int]) -> list[int]:
    """Tokens leaving each block, given n tokens entering block 0 (the same rule the blocks use).

    Example:
        >>> token_plan(17, 1, 2, r=4, drop=0.5, drop_at={0})
        [5, 3]
    """
    out = []
    for i in range(depth):
        if i in drop_at and drop > 0:
            n = prefix + keep_count(n, prefix, drop)
        n -= merge_count(n, prefix, r)
        out.append(n)
    return out


@register_handler(TomeConfig, PatchDropConfig)
def reduce_tokens(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """ToMe-merge the candidate's `TomeConfig.r` tokens in every block and drop its
    `PatchDropConfig.fraction` of patches at the blocks `at`; notes the tokens per block.

    Example:
        >>> new = reduce_tokens(vit, CompressionConfig({"tome": {"r": 2}}), ctx)
    """
    new = copy.deepcopy(model)
    n = num_tokens(new)
    prefix = int(getattr(new, "num_prefix_tokens", 0))
    depth = len(new.blocks)
    tome, patch_drop = config.get("tome") or TomeConfig(), config.get("patch_drop") or PatchDropConfig()
    r, drop = tome.r, patch_drop.fraction
    drop_at = set(chosen_indices(new, patch_drop.at, "patch_drop.at")) if drop > 0 else set()
    if drop > 0 and getattr(new, "cls_token", None) is None:
        raise ConfigError("patch_drop ranks patches by the cls token's attention, but this model has no cls token; "
                          "use tome instead")
    plan = token_plan(n, prefix, depth, r, drop, drop_at)
    ctx.note(tokens_in=n, tokens_per_block=plan, token_merge_r=r, token_drop=drop, token_drop_at=sorted(drop_at))
    # Nystrom blocks that now see no more tokens than landmarks compute exact attention (m = n)
    entering = [n, *plan[:-1]]
    exact = [i for i, blk in enumerate(new.blocks)
             if isinstance(blk.attn, NystromAttention) and blk.attn.landmarks >= entering[i]]
    if exact:
        ctx.note(nystrom_exact_blocks=exact)
    if plan[-1] == n:
        return new  # nothing to reduce at this input size: the model stays as it was
    new.blocks = TokenReducedBlocks(*[
        ToMeBlock(blk, r, drop if i in drop_at else 0.0, prefix) for i, blk in enumerate(new.blocks)
    ])
    return new


__all__ = [
    "ToMeBlock",
    "TokenReducedBlocks",
    "attend",
    "bipartite_merge",
    "drop_patches",
    "keep_count",
    "merge_count",
    "reduce_tokens",
    "softmax_attend",
    "token_plan",
    "token_problem",
]
