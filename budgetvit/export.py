"""Exported weights: safetensors (no pickle, so loading runs no code) plus a JSON file with the
model config and what predicting needs (classes, normalisation, the run's config)."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save

from .models import ViTConfig, VisionTransformer


def save_weights(model: VisionTransformer, path: str | Path, meta: dict | None = None) -> None:
    """Write PATH (safetensors) and PATH with .json suffix: {"model": the model config, **meta}."""
    path = Path(path)
    # Written by Python, not save_file: that creates the file readable by its owner alone.
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.write_bytes(save(tensors))
    text = json.dumps({"model": model.cfg.to_dict(), **(meta or {})}, indent=2)
    path.with_suffix(".json").write_text(text + "\n")


def read_json(path: str | Path) -> dict:
    """The JSON beside exported weights PATH. (Exports before 2026-11-30 hold the model config
    alone, at the top level.)"""
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return meta if "model" in meta else {"model": meta}


def load_weights(path: str | Path) -> VisionTransformer:
    """Rebuild a model from PATH (safetensors) and its .json config. Runs no pickled code."""
    model = VisionTransformer(ViTConfig(**read_json(path)["model"]))
    model.load_state_dict(load_file(str(path)))
    return model
