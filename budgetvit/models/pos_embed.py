"""Resampling a learned absolute position embedding to another patch grid.

The model keeps one embedding for its base grid and resamples it on every forward pass
whose grid differs. The parameter itself never changes shape or identity, so the optimizer
keeps updating it after a curriculum step, and evaluating at another size never touches the
weights (no lossy down-and-up round trip, unlike the paper's released code).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_pos_embed(pos_embed: torch.Tensor, base_grid: tuple[int, int],
                       new_grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """(1, num_prefix + Hb*Wb, D) -> (1, num_prefix + H*W, D).

    Bicubic, in float32 (bf16 interpolation visibly distorts the embedding), antialiased when
    shrinking so small curriculum sizes see a smoothed rather than aliased grid. Prefix
    (class-token) entries are passed through untouched. Identity at the base grid.
    """
    if tuple(new_grid) == tuple(base_grid):
        return pos_embed
    prefix, grid_part = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    D = pos_embed.shape[-1]
    img = grid_part.reshape(1, *base_grid, D).permute(0, 3, 1, 2).float()  # (1, D, Hb, Wb)
    shrinking = new_grid[0] < base_grid[0] or new_grid[1] < base_grid[1]
    img = F.interpolate(img, size=tuple(new_grid), mode="bicubic", align_corners=False,
                        antialias=shrinking)
    grid_part = img.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)
    return torch.cat([prefix, grid_part.to(pos_embed.dtype)], dim=1)
