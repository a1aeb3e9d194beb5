"""Vision Transformer in DeiT/ViT form, with either the plain FFN or the locality FFN.

Module and parameter names follow timm's `vision_transformer` so that weights map one to one
(see interop.py). The model accepts any input whose sides are multiples of the patch size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .layers import Block, PatchEmbed
from .pos_embed import resample_pos_embed


@dataclass(frozen=True)
class ViTConfig:
    """Every field of a model; a named shape (registry.py) is one of these."""
    dim: int = 384
    depth: int = 12
    heads: int = 6
    patch_size: int = 16
    base_img_size: int = 224  # the position embedding is stored for this size's patch grid
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" (plain ViT) or "local" (depthwise-conv locality FFN)
    act: str = "gelu"  # "gelu" or "hswish"
    ffn_bias: bool = True
    drop_path: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class VisionTransformer(nn.Module):
    num_prefix = 1  # the class token

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.base_img_size % cfg.patch_size:
            raise ValueError(f"base_img_size {cfg.base_img_size} is not a multiple of "
                             f"patch_size {cfg.patch_size}")
        self.cfg = cfg
        side = cfg.base_img_size // cfg.patch_size
        self.base_grid = (side, side)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + side * side, cfg.dim))
        # Stochastic depth grows linearly with depth, as in DeiT.
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.ffn, cfg.act, cfg.ffn_bias, r,
                  drops=cfg.drop_path > 0)
            for r in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DeiT/timm initialisation: trunc-normal(0.02) linear weights and embeddings, zero
        biases. Convolutions (patch embedding, the locality FFN's depthwise 3x3) keep PyTorch's
        default, as in timm and the authors' code: at std 0.02 the depthwise conv (fan-in 9,
        default std 0.19) would start the whole locality branch ~10x weaker."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                m.reset_parameters()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        return resample_pos_embed(self.pos_embed, self.base_grid, grid, self.num_prefix)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        P = self.cfg.patch_size
        if x.shape[-2] % P or x.shape[-1] % P:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of patch size {P}")
        x, grid = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        x = x + self.pos_embed_for(grid)
        for block in self.blocks:
            x = block(x, grid, self.num_prefix)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0])  # class-token pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
