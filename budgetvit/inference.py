"""Models rebuilt from checkpoints for evaluation, prediction and export."""
from __future__ import annotations

import sys
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
    path: Path  # the checkpoint file read


def checkpoint_files(path: str | Path) -> list[Path]:
    """A checkpoint file, or a run directory's checkpoints, newest first."""
    path = Path(path)
    if path.is_dir():
        found = checkpoint.list_checkpoints(path)
        if not found:
            raise checkpoint.CheckpointError(f"no checkpoints in {path}/checkpoints")
        return found[::-1]
    if not path.exists():
        raise checkpoint.CheckpointError(f"checkpoint {path} does not exist")
    return [path]


def load(path: str | Path, device="cpu") -> Loaded:
    """The model (and EMA) of a checkpoint file, or of a run directory's newest checkpoint
    that reads (a damaged newer one is named on stderr and skipped, as a resume does)."""
    files = checkpoint_files(path)
    for i, file in enumerate(files):
        try:
            state = checkpoint.load(file)
            break
        except checkpoint.CheckpointError as e:
            if i == len(files) - 1:
                raise
            print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
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
                  tuple(state["mean"]), tuple(state["std"]), state["clock"]["steps"], file)
