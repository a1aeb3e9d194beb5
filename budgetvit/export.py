"""Exported weights: safetensors (no pickle, so loading runs no code) plus a JSON model config."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .models import ViTConfig, VisionTransformer


def save_weights(model: VisionTransformer, path: str | Path) -> None:
    """Write PATH (safetensors) and PATH with .json suffix (the model config)."""
    path = Path(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(path))
    path.with_suffix(".json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")


def load_weights(path: str | Path) -> VisionTransformer:
    """Rebuild a model from PATH (safetensors) and its .json config. Runs no pickled code."""
    path = Path(path)
    cfg = ViTConfig(**json.loads(path.with_suffix(".json").read_text()))
    model = VisionTransformer(cfg)
    model.load_state_dict(load_file(str(path)))
    return model
