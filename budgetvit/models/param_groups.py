"""Optimizer parameter groups: weight decay only where it regularises."""
from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices/kernels, and exempt biases, norms, position embedding and
    class token (decaying those only pulls them toward zero with no regularising effect)."""
    exempt_names = getattr(model, "no_weight_decay", lambda: set())()
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (exempt if p.ndim <= 1 or name in exempt_names else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": exempt, "weight_decay": 0.0}]
