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
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    P, D = cfg.patch_size, cfg.dim
    patches = (h // P) * (w // P)
    tokens = patches + 1  # + class token
    hidden = int(D * cfg.mlp_ratio)
    macs = patches * cfg.in_chans * P * P * D  # patch embedding
    per_block = tokens * 3 * D * D + 2 * tokens * tokens * D + tokens * D * D  # attention
    ffn_tokens = patches if cfg.ffn == "local" else tokens  # the class token skips locality FFNs
    per_block += 2 * ffn_tokens * D * hidden
    if cfg.ffn == "local":
        per_block += patches * hidden * 9  # 3x3 depthwise conv
    macs += cfg.depth * per_block + D * cfg.num_classes
    return 2 * macs


def train_flops(cfg: ViTConfig, img_size: int | tuple[int, int]) -> int:
    """Forward + backward: backward costs twice the forward (grads of inputs and weights)."""
    return 3 * forward_flops(cfg, img_size)
