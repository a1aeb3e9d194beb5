"""A synthetic dataset for speed work: random images whose class is a brightness pattern, so
it is learnable but costs no disk or decoding."""
from __future__ import annotations

import torch


def make(n: int, classes: int, size: int = 32, chans: int = 3, seed: int = 0):
    """(images uint8 (n, chans, size, size), labels (n,)): noise plus a class-specific bar."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    images = torch.randint(0, 128, (n, chans, size, size), generator=gen, dtype=torch.uint8)
    rows = (labels * size // classes).tolist()
    for i, r in enumerate(rows):
        images[i, :, r:r + max(1, size // classes)] += 127
    return images, labels
