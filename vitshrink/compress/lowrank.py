"""Nystrom low-rank attention (Nystromformer, Xiong et al. 2021) built from a trained timm attention.

Softmax attention ``softmax(Q K^T) V`` costs O(n^2) in the number of tokens n. Nystromformer picks
m landmarks (segment means of the queries and of the keys) and approximates it by

    softmax(Q K~^T) · pinv(softmax(Q~ K~^T)) · softmax(Q~ K^T) V,

which costs O(n m). The pseudo-inverse uses the paper's iterative method, so the whole module is
made of matmuls and softmaxes (ONNX-friendly, no SVD). With m = n the segment means are the
tokens themselves and the product equals exact softmax attention; the only error left is the
truncated pseudo-inverse iteration, which `NystromAttention` makes negligible (see `pinv_iters`).

Example:
    >>> import timm, torch
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32,
    ...                         depth=1, num_heads=2, num_classes=3).eval()
    >>> nys = NystromAttention.from_attention(vit.blocks[0].attn, landmarks=17, conv_kernel=0)
    >>> x = torch.randn(1, 17, 32)
    >>> bool((nys(x) - vit.blocks[0].attn(x)).abs().max() < 1e-3)
    True
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..spaces import CompressionConfig, ConfigError
from ..techniques import chosen_indices
from ..techniques.nystrom import lowrank_problem
from ..techniques.nystrom import NystromConfig
from ._registry import BuildContext, register_handler

# The iteration Z <- Z (13 I - AZ (15 I - AZ (7 I - AZ))) / 4 multiplies a small singular value's
# t = s * z by 13/4 per step, so it needs about log_{13/4}(||A||_1 ||A||_inf / (s^2)) steps.
_GROWTH = 13.0 / 4.0


def exact_pinv_iters(m: int, tol: float = 1e-5) -> int:
    """Iterations after which every singular value s >= `tol` of an m x m softmax matrix is inverted.

    The paper's initialisation Z0 = A^T / (||A||_1 ||A||_inf) gives s*z0 = s^2 / (||A||_1 ||A||_inf)
    with ||A||_inf = 1 (rows sum to one) and ||A||_1 <= m; each step grows it by at least 13/4 until
    it converges. Directions with s < tol stay un-inverted, which changes A·Z·A by at most s.
    """
    return int(math.ceil(math.log(m / tol**2) / math.log(_GROWTH))) + 1


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of the last two dims by the Nystromformer iteration.

    Initialised with Z0 = A^T / (||A||_1 ||A||_inf) per matrix (the paper's choice, which makes the
    iteration converge); only matmuls, so it exports to ONNX and runs on any backend.

    Example:
        >>> a = torch.softmax(torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 3.0]]), -1)
        >>> bool(torch.allclose(iterative_pinv(a, 12) @ a, torch.eye(3), atol=1e-4))
        True
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm_1 = a.abs().sum(dim=-2).amax(dim=-1, keepdim=True).unsqueeze(-1)  # max column sum
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)  # max row sum
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (m, n) averaging matrix of m contiguous segments that partition n tokens.

    Segment i covers tokens [floor(i n / m), floor((i + 1) n / m)), so lengths differ by at most one
    when m does not divide n (an adaptive segment mean; no padding token biases the means), and
    m = n gives the identity. Built from the shape only, it is a constant in an exported graph.

    Example:
        >>> segment_means(5, 2, torch.float32, torch.device("cpu"))
        tensor([[0.5000, 0.5000, 0.0000, 0.0000, 0.0000],
                [0.0000, 0.0000, 0.3333, 0.3333, 0.3333]])
    """
    rows = []
    for i in range(m):
        lo, hi = (i * n) // m, ((i + 1) * n) // m
        rows.append([1.0 / (hi - lo) if lo <= t < hi else 0.0 for t in range(n)])
    return torch.tensor(rows, dtype=dtype, device=device)


class NystromAttention(nn.Module):
    """Multi-head Nystrom attention that reuses a timm `Attention`'s trained projections.

    Args:
        dim: Token width.
        num_heads, head_dim: Heads and their width (attn_dim = num_heads * head_dim).
        landmarks: m, the number of landmarks; clamped to the token count at run time (token
            merging can shrink the sequence below m in later blocks).
        conv_kernel: Kernel of the depthwise convolution over tokens added on the values (the
            paper's skip connection); 0 turns it off. It starts at zero, so a freshly converted
            module is the plain Nystrom approximation and fine-tuning can learn the skip.
        pinv_iters: Iterations of the pseudo-inverse; the paper uses 6. When m equals the token
            count the approximation is exact in theory, so there the iteration runs to convergence
            (`exact_pinv_iters(m)`, about 22 for m = 17) and the module matches softmax attention.

    `forward(x)` has timm's signature; `attend(x, size, cls_attention)` also returns what token
    reduction needs (keys averaged over heads, attention of the cls token) and applies ToMe's
    proportional attention (log size added to the logits of every key).

    Example:
        >>> nys = NystromAttention(dim=32, num_heads=2, landmarks=4)
        >>> nys(torch.randn(2, 17, 32)).shape
        torch.Size([2, 17, 32])
    """

    structural_attributes = ('landmarks', 'conv_kernel', 'pinv_iters')  # what the structural signature reads besides shapes

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, landmarks: int = 8,
                 conv_kernel: int = 0, pinv_iters: int = 6, qkv_bias: bool = True) -> None:
        super().__init__()
        if landmarks < 1 or conv_kernel < 0 or pinv_iters < 1:
            raise ConfigError(f"NystromAttention needs landmarks >= 1 (got {landmarks}), conv_kernel >= 0 "
                              f"(got {conv_kernel}) and pinv_iters >= 1 (got {pinv_iters})")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.landmarks = landmarks
        self.conv_kernel = conv_kernel
        self.pinv_iters = pinv_iters
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias)
        self.q_norm: nn.Module = nn.Identity()
        self.k_norm: nn.Module = nn.Identity()
        self.norm: nn.Module = nn.Identity()
        self.gate: nn.Module | None = None
        self.proj = nn.Linear(self.attn_dim, dim)
        self.proj_drop: nn.Module = nn.Identity()
        self.conv: nn.Conv2d | None = None
        if conv_kernel:
            # depthwise over tokens, one filter per head, as in the paper's code
            self.conv = nn.Conv2d(num_heads, num_heads, (conv_kernel, 1), groups=num_heads, bias=False)
            nn.init.zeros_(self.conv.weight)

    @classmethod
    def from_attention(cls, attn: nn.Module, landmarks: int, conv_kernel: int = 0,
                       pinv_iters: int = 6) -> NystromAttention:
        """A Nystrom module with deep copies of `attn`'s qkv, q_norm, k_norm, norm, gate and proj.

        Works with timm's `Attention` and anything with the same attributes (e.g. a head-pruned
        one with fewer heads).
        """
        needed = ("qkv", "proj", "num_heads", "head_dim")
        missing = [a for a in needed if not hasattr(attn, a)]
        if missing:
            raise ConfigError(f"cannot convert {type(attn).__name__} to Nystrom attention: it has no "
                              f"{', '.join(missing)}; only timm-style Attention modules are supported")
        dim = attn.qkv.in_features if hasattr(attn.qkv, "in_features") else attn.proj.out_features
        new = cls(dim, attn.num_heads, attn.head_dim, landmarks, conv_kernel, pinv_iters)
        new.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        new.scale = float(getattr(attn, "scale", attn.head_dim**-0.5))
        for name in ("qkv", "q_norm", "k_norm", "norm", "gate", "proj", "proj_drop"):
            if getattr(attn, name, None) is not None:
                setattr(new, name, copy.deepcopy(getattr(attn, name)))
        p = next(attn.parameters())
        return new.to(device=p.device, dtype=p.dtype)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("NystromAttention does not support attention masks or causal attention")
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor, size: torch.Tensor | None = None, cls_attention: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Attention output, keys averaged over heads (B, N, head_dim), and optionally the cls
        token's attention to every token, averaged over heads (B, N).

        `size` (B, N, 1) is how many original tokens each token stands for (ToMe); log(size) is
        added to the logits of the keys (for landmark keys, log of the segment's mean size).
        """
        b, n = x.shape[0], int(x.shape[1])  # int(): the legacy ONNX tracer hands out sizes as tensors
        m = min(self.landmarks, n)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        seg = segment_means(n, m, q.dtype, q.device)
        q_land, k_land = seg @ q, seg @ k  # (B, h, m, d)
        logits_1 = q @ k_land.transpose(-1, -2)  # tokens -> landmark keys
        logits_2 = q_land @ k_land.transpose(-1, -2)  # landmarks -> landmark keys
        logits_3 = q_land @ k.transpose(-1, -2)  # landmark queries -> tokens
        if size is not None:
            log_size = size[..., 0].log()[:, None, None, :]  # (B, 1, 1, N)
            log_land = (size[..., 0] @ seg.transpose(0, 1)).log()[:, None, None, :]  # (B, 1, 1, m)
            logits_1, logits_2, logits_3 = logits_1 + log_land, logits_2 + log_land, logits_3 + log_size
        kernel_1, kernel_2, kernel_3 = logits_1.softmax(-1), logits_2.softmax(-1), logits_3.softmax(-1)
        if m == n:
            # Exact in theory: iterate to convergence, in float64 because the steps that invert the
            # small singular values would otherwise also blow up float32 round-off (measured: the
            # error grows again past ~15 float32 steps).
            z = iterative_pinv(kernel_2.double(), max(self.pinv_iters, exact_pinv_iters(m)))
            left = kernel_1.double() @ z
            out = (left @ (kernel_3.double() @ v.double())).to(v.dtype)
            left = left.to(v.dtype)
        else:
            left = kernel_1 @ iterative_pinv(kernel_2, self.pinv_iters)  # (B, h, N, m)
            out = left @ (kernel_3 @ v)
        if self.conv is not None:
            kk = self.conv_kernel
            out = out + self.conv(F.pad(v, (0, 0, (kk - 1) // 2, kk // 2)))
        cls_attn = (left[:, :, 0:1] @ kernel_3).mean(1)[:, 0] if cls_attention else None
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)
        out = self.norm(out)
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        out = self.proj_drop(self.proj(out))
        return out, k.mean(1), cls_attn

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, landmarks={self.landmarks}, "
                f"conv_kernel={self.conv_kernel}, pinv_iters={self.pinv_iters}")


def num_tokens(model: nn.Module) -> int:
    """Tokens a timm VisionTransformer feeds its blocks at its configured input size (patches + prefix)."""
    try:
        return int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0))
    except AttributeError:
        raise ConfigError(f"{type(model).__name__} has no patch_embed.num_patches; a timm VisionTransformer "
                          "is needed to count its tokens") from None


@register_handler(NystromConfig)
def nystrom(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """Replace `blocks[i].attn` by Nystrom attention with the candidate's `NystromConfig.landmarks`
    landmarks, in every block or in its `blocks`, reusing the trained projections.

    Example:
        >>> new = nystrom(vit, CompressionConfig({"nystrom": {"landmarks": 8}}), ctx)
    """
    new = copy.deepcopy(model)
    s = config.get("nystrom")
    if s is None:
        return new
    n = num_tokens(new)
    if s.landmarks > n:
        raise ConfigError(f"nystrom.landmarks={s.landmarks} exceeds the {n} tokens of this model; use at most {n}")
    blocks = chosen_indices(new, s.blocks, "nystrom.blocks")
    for i in blocks:
        new.blocks[i].attn = NystromAttention.from_attention(new.blocks[i].attn, s.landmarks, s.conv)
    ctx.note(landmarks=s.landmarks, blocks=blocks, tokens=n, nystrom_conv=s.conv)
    return new


__all__ = ["NystromAttention", "exact_pinv_iters", "iterative_pinv", "lowrank_problem", "num_tokens", "nystrom",
           "segment_means"]
