"""Learning rate as a pure function of budget progress p = spent / budget in [0, 1].

Because the schedule is defined on budget progress rather than epochs, a run always ends
annealed at its deadline, whatever the GPU, and resume only needs the clock.
"""
from __future__ import annotations

import math


def lr_at(p: float, peak: float, floor: float, warmup: float, decay: str = "cosine") -> float:
    """Linear warm-up from 0 to `peak` over the first `warmup` share of the budget, then cosine
    (or linear) decay that reaches `floor` exactly at p = 1."""
    p = min(max(p, 0.0), 1.0)
    if p < warmup:
        return peak * p / warmup
    t = (p - warmup) / (1.0 - warmup)  # 0 -> 1 over the decay phase
    if decay == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if decay == "linear":
        return peak + (floor - peak) * t
    raise ValueError(f"decay must be 'cosine' or 'linear', got {decay!r}")
