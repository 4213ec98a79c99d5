"""Truncated-SVD factorisation of the Linear layers of a ViT's blocks.

A weight ``W`` (out x in) is replaced by its best rank-r approximation ``U_r S_r V_r^T``
(Eckart-Young), stored as two Linears in -> r -> out, which costs ``r * (in + out)`` weights
instead of ``in * out`` (Denton et al., "Exploiting Linear Structure Within Convolutional Networks
for Efficient Evaluation", NeurIPS 2014; Xue et al., "Restructuring of Deep Neural Network Acoustic
Models with Singular Value Decomposition", Interspeech 2013). A layer is factorised only where that
saves weights, so at ``svd_rank=1.0`` the model is unchanged.

Example:
    >>> cfg = CompressionConfig({"svd": {"rank": 0.25}})
    >>> small = svd_factorise(model, cfg, ctx)
    >>> type(small.blocks[0].mlp.fc1).__name__
    'LowRankLinear'
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import copy_model
from ..spaces import CompressionConfig, ConfigError
from ..techniques import blocks as walk_blocks, chosen_indices
from ..techniques.svd import SvdConfig
from ._registry import BuildContext, register_handler

# The Linear layers of a timm ViT block that are factorised, as paths inside the block.
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class LowRankLinear(nn.Module):
    """``y = second(first(x))``: a Linear in -> rank without bias, then rank -> out with the bias.

    Example:
        >>> layer = LowRankLinear(8, 2, 4)
        >>> layer(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


def svd_rank_for(fraction: float, out_features: int, in_features: int) -> int:
    """``max(1, ceil(fraction * min(out, in)))``, tolerant of float noise (0.3 * 10 is 3, not 4).

    Example:
        >>> svd_rank_for(0.3, 10, 20), svd_rank_for(0.01, 10, 20), svd_rank_for(1.0, 10, 20)
        (3, 1, 10)
    """
    return max(1, math.ceil(fraction * min(out_features, in_features) - 1e-9))


def saves_params(rank: int, out_features: int, in_features: int) -> bool:
    """Whether two factors of `rank` hold fewer weights than the dense (out x in) matrix."""
    return rank * (in_features + out_features) < in_features * out_features


@torch.no_grad()
def factorise_linear(layer: nn.Linear, rank: int) -> tuple[LowRankLinear, float]:
    """The rank-`rank` truncated SVD of `layer` as a `LowRankLinear`, and the fraction of the
    squared singular values (energy) it keeps. The singular values are split evenly,
    ``first = sqrt(S_r) V_r^T`` and ``second = U_r sqrt(S_r)``, so both factors are equally scaled.

    Example:
        >>> low, energy = factorise_linear(nn.Linear(6, 4), 4)
        >>> energy
        1.0
    """
    out_f, in_f = layer.weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank {rank} must be in [1, {min(out_f, in_f)}] for a {out_f}x{in_f} weight")
    w = layer.weight.detach()
    # float64: the full-rank factorisation reproduces W to float32 rounding
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    low = LowRankLinear(in_f, rank, out_f, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    low.first.weight.copy_((root[:, None] * vh[:rank]).to(w.dtype))
    low.second.weight.copy_((u[:, :rank] * root[None, :]).to(w.dtype))
    if layer.bias is not None:
        low.second.bias.copy_(layer.bias.detach())
    low.train(layer.training)
    energy = float(s[:rank].pow(2).sum() / s.pow(2).sum()) if s.pow(2).sum() > 0 else 1.0
    return low, round(energy, 6)


def _blocks_to_factorise(model: nn.Module, wanted: tuple[int, ...]) -> list[int]:
    if not walk_blocks(model):
        raise ConfigError(f"svd needs a timm VisionTransformer with .blocks; got {type(model).__name__}")
    return chosen_indices(model, wanted, "svd.blocks")


@register_handler(SvdConfig)
def svd_factorise(model: nn.Module, config: CompressionConfig, ctx: BuildContext | None) -> nn.Module:
    """Replace qkv, proj, fc1 and fc2 of the chosen blocks (`lowrank_blocks`, empty: all) by their
    truncated SVD at rank ``max(1, ceil(svd_rank * min(out, in)))`` wherever that saves weights.

    Returns a new model. Notes `svd_ranks` (layer path -> rank, factorised layers), `svd_energy`
    (layer path -> kept fraction of squared singular values) and `svd_dense` (layers left whole).

    Example:
        >>> small = svd_factorise(tiny_vit, CompressionConfig({"svd": {"rank": 0.25}}), ctx)
        >>> small.blocks[0].mlp.fc1.rank
        8
    """
    new = copy_model(model)
    s = config.get("svd") or SvdConfig()
    ranks: dict[str, int] = {}
    energy: dict[str, float] = {}
    dense: list[str] = []
    for b in _blocks_to_factorise(new, s.blocks):
        block = new.blocks[b]
        for path in BLOCK_LINEARS:
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            layer = getattr(parent, attr, None)
            name = f"blocks.{b}.{path}"
            if not isinstance(layer, nn.Linear):
                dense.append(name)  # absent or already replaced (e.g. by Nystrom); nothing to factorise
                continue
            out_f, in_f = layer.weight.shape
            rank = svd_rank_for(s.rank, out_f, in_f)
            if not saves_params(rank, out_f, in_f):
                dense.append(name)
                continue
            low, kept = factorise_linear(layer, rank)
            setattr(parent, attr, low)
            ranks[name], energy[name] = rank, kept
    if ctx is not None:
        ctx.note(svd_ranks=ranks, svd_energy=energy, svd_dense=dense)
    return new


__all__ = ["BLOCK_LINEARS", "LowRankLinear", "factorise_linear", "saves_params", "svd_factorise", "svd_rank_for"]
