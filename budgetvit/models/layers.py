"""Building blocks of the ViT: patch embedding, attention, the plain FFN and the locality FFN.

Every layer that needs the patch grid receives it as an argument `grid = (H, W)`;
nothing here guesses it from the token count, so non-square images work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int]

ACTIVATIONS = {"hswish": nn.Hardswish, "gelu": nn.GELU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches -> D-dim tokens, through one strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        x = self.proj(x)  # (B, D, H, W)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid  # (B, H*W, D)


class Attention(nn.Module):
    """Multi-head self-attention through torch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, C/heads)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """The plain ViT FFN: fc1 -> activation -> fc2, applied to every token."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = make_activation(act)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, grid: Grid, num_prefix: int) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LocalityFFN(nn.Module):
    """The locality FFN of Irandoust et al. 2022 (after LocalViT), as in the authors' code:
    fc1 -> act -> Seq2Im -> 3x3 depthwise conv -> act -> Im2Seq -> fc2, on patch tokens only.

    Prefix tokens (the class token) bypass it: their output is zero, so the block's residual
    leaves them to attention alone. Returns a tensor shaped like the input.
    """

    def __init__(self, dim: int, hidden: int, act: str = "hswish", bias: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act1 = make_activation(act)
        self.conv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden, bias=bias)
        # The conv sees a channels-last image (below), so its weight's gradient comes with
        # channels-last strides, (9, 1, 3, 1); stored alike, the weight lets DDP's gradient
        # buckets match them (else: "Grad strides do not match bucket view strides", and a copy
        # every step). .contiguous(memory_format=channels_last) keeps (9, 9, 3, 1): with one
        # input channel per group both strides count as channels-last.
        w = self.conv.weight.data
        self.conv.weight.data = w.new_empty(hidden, 3, 3, 1).permute(0, 3, 1, 2).copy_(w)
        self.act2 = make_activation(act)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, grid: Grid, num_prefix: int) -> torch.Tensor:
        B, N, _ = x.shape
        H, W = grid
        if N - num_prefix != H * W:
            raise ValueError(f"{N - num_prefix} patch tokens do not fill the {H}x{W} grid")
        h = self.act1(self.fc1(x[:, num_prefix:]))  # (B, H*W, 4D)
        # Seq2Im: a contiguous (B, H*W, C) tensor *is* a channels-last (B, C, H, W) image, so
        # this permute copies nothing and the depthwise conv runs in its fast NHWC layout.
        img = h.reshape(B, H, W, -1).permute(0, 3, 1, 2)  # (B, 4D, H, W), channels-last
        img = self.act2(self.conv(img))
        h = img.permute(0, 2, 3, 1).reshape(B, H * W, -1)  # Im2Seq: (B, H*W, 4D)
        out = self.fc2(h)  # (B, H*W, D)
        return F.pad(out, (0, 0, num_prefix, 0))  # zero update for the prefix tokens


FFNS = {"mlp": Mlp, "local": LocalityFFN}


class Block(nn.Module):
    """Pre-LayerNorm transformer block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, ffn: str, act: str,
                 ffn_bias: bool, drop_path: float, drops: bool):
        super().__init__()
        if ffn not in FFNS:
            raise ValueError(f"ffn must be one of {sorted(FFNS)}, got {ffn!r}")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FFNS[ffn](dim, int(dim * mlp_ratio), act=act, bias=ffn_bias)
        # The rate is a tensor, not a float attribute: torch.compile bakes floats into the
        # graph, so every block (each with its own rate) would be compiled separately.
        self.register_buffer("drop_rate", torch.tensor(float(drop_path)), persistent=False)
        # Whether the model uses stochastic depth at all (a Python bool: it shapes the graph).
        # Block 0's rate is 0, but it takes the same path, with a mask that keeps everything:
        # one graph for all blocks, so one compile per image size instead of two.
        self.drops = drops

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample stochastic depth: the residual branch is dropped for whole images and
        the kept ones are scaled by 1 / (1 - rate)."""
        if not (self.training and self.drops):
            return x
        keep = 1.0 - self.drop_rate
        mask = torch.rand(x.shape[0], 1, 1, device=x.device) < keep
        return x * mask / keep

    def forward(self, x: torch.Tensor, grid: Grid, num_prefix: int) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x), grid, num_prefix))
