"""Models rebuilt from checkpoints for evaluation, prediction and export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from .config import Config, from_dict
from .models import ViTConfig, VisionTransformer


@dataclass
class Loaded:
    model: VisionTransformer
    ema: VisionTransformer | None
    cfg: Config
    classes: list[str]
    mean: tuple
    std: tuple
    step: int


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = checkpoint.list_checkpoints(path)
        if not found:
            raise checkpoint.CheckpointError(f"no checkpoints in {path}/checkpoints")
        return found[-1]
    if not path.exists():
        raise checkpoint.CheckpointError(f"checkpoint {path} does not exist")
    return path


def load(path: str | Path, device="cpu") -> Loaded:
    state = checkpoint.load(resolve_checkpoint(path))
    try:
        mcfg = ViTConfig(**state["model_config"])
        model = VisionTransformer(mcfg)
        model.load_state_dict(state["model"])
        ema = None
        if state.get("ema") is not None:
            ema = VisionTransformer(mcfg)
            ema.load_state_dict(state["ema"]["weights"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise checkpoint.CheckpointError(f"{path} is not a budgetvit checkpoint ({e})") from None
    for m in (model, ema):
        if m is not None:
            m.to(device).eval()
    return Loaded(model, ema, from_dict(state["config"]), state["classes"],
                  tuple(state["mean"]), tuple(state["std"]), state["clock"]["steps"])
