"""Weights in and out of timm's vision_transformer layout (files are written by export.py).

Our module names already follow timm's, so a plain-FFN model maps key for key; the functions
still check the mapping explicitly so that a mismatch fails here, not silently in a load.
"""
from __future__ import annotations

import torch

from .vit import VisionTransformer


# timm's vision_transformer: a plain FFN with biases and GELU. Another activation has the
# same weights, so only this check stops a load that would compute something else.
TIMM_FFN = {"ffn": "mlp", "act": "gelu", "ffn_bias": True}


def _check_timm_equivalent(model: VisionTransformer) -> None:
    differ = [f"{k}={getattr(model.cfg, k)!r}" for k, v in TIMM_FFN.items()
              if getattr(model.cfg, k) != v]
    if differ:
        raise ValueError(f"only plain-FFN models (ffn='mlp', act='gelu', ffn_bias=True) have a "
                         f"timm equivalent; this one has {', '.join(differ)}")


def to_timm_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """State dict loadable by timm.create_model('vit_*_patch*', num_classes=...)."""
    _check_timm_equivalent(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def from_timm_state_dict(model: VisionTransformer, state: dict[str, torch.Tensor]) -> None:
    """Load timm vision_transformer weights (same shape, plain FFN) into `model`, strictly."""
    _check_timm_equivalent(model)
    ours = model.state_dict()
    missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or extra:
        raise ValueError(f"timm state dict does not match: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for k, v in state.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"{k}: timm shape {tuple(v.shape)} != ours {tuple(ours[k].shape)}")
    model.load_state_dict(state)
