"""Exponential moving average of the weights, updated without any host-device sync.

torch's AveragedModel reads its update counter on the host at every update (a sync per
step on CUDA) and cannot skip a step on a device-side flag, so this small class does both:
the decay ramps up as min(decay, (1 + n) / (10 + n)) over the n good updates so far (a short
budget's EMA would otherwise still be mostly the random init), and a step flagged bad on the
device leaves the average untouched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = torch.zeros((), device=next(model.parameters()).device)

    @torch.no_grad()
    def update(self, model: nn.Module, ok: torch.Tensor) -> None:
        """Move the average toward `model`; ok: 0-dim bool tensor (False = skip this step)."""
        n = self.updates
        decay = torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        weight = (1.0 - decay) * ok  # 0 on a bad step: nothing moves
        ours, theirs = list(self.module.parameters()), list(model.parameters())
        # avg = (1 - w) avg + w p. Not _foreach_lerp_: with a device-tensor weight it only has
        # a per-tensor overload, which on CUDA launches one kernel per parameter.
        torch._foreach_mul_(ours, 1.0 - weight)
        torch._foreach_add_(ours, torch._foreach_mul(theirs, weight))
        self.updates += ok

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates.copy_(state["updates"])
