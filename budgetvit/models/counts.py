"""Parameter and FLOP counts, used for MFU and to plan the curriculum.

FLOPs are counted analytically (2 per multiply-accumulate) for the matrix products and
convolutions that dominate; norms, activations, softmax and adds are left out, which is the
usual convention for MFU. tests/test_counts.py checks this against torch's FlopCounterMode.
"""
from __future__ import annotations

from .vit import ViTConfig


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(cfg: ViTConfig, img_size: int | tuple[int, int]) -> int:
    """Forward FLOPs for one image of img_size (int for square, or (H, W))."""
    D, patches = cfg.dim, _patches(cfg, img_size)
    tokens = patches + 1  # + class token
    hidden = int(D * cfg.mlp_ratio)
    macs = _patch_embed_flops(cfg, img_size) // 2
    per_block = tokens * 3 * D * D + 2 * tokens * tokens * D + tokens * D * D  # attention
    ffn_tokens = patches if cfg.ffn == "local" else tokens  # the class token skips locality FFNs
    per_block += 2 * ffn_tokens * D * hidden
    if cfg.ffn == "local":
        per_block += patches * hidden * 9  # 3x3 depthwise conv
    macs += cfg.depth * per_block + D * cfg.num_classes
    return 2 * macs


def train_flops(cfg: ViTConfig, img_size: int | tuple[int, int]) -> int:
    """Forward + backward: backward costs twice the forward (grads of inputs and weights),
    but for the patch embedding's input gradient, which the image does not need."""
    return 3 * forward_flops(cfg, img_size) - _patch_embed_flops(cfg, img_size)


def _patches(cfg: ViTConfig, img_size: int | tuple[int, int]) -> int:
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return (h // cfg.patch_size) * (w // cfg.patch_size)


def _patch_embed_flops(cfg: ViTConfig, img_size: int | tuple[int, int]) -> int:
    return 2 * _patches(cfg, img_size) * cfg.in_chans * cfg.patch_size ** 2 * cfg.dim
