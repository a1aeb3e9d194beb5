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


def load(path: str | Path, device="cpu") -> Loaded:
    """The model (and EMA) of a checkpoint file, or of a run directory's newest checkpoint
    that reads (a damaged newer one is named on stderr and skipped, as a resume does)."""
    path = Path(path)
    if path.is_dir():
        if not checkpoint.list_checkpoints(path):
            raise checkpoint.CheckpointError(f"no checkpoints in {path}/checkpoints")
        found = checkpoint.newest_loadable(path, warn=lambda m: print(m, file=sys.stderr))
        if found is None:
            raise checkpoint.CheckpointError(f"no readable checkpoint in {path}/checkpoints")
        file, state = found
    else:
        file, state = path, checkpoint.load(path)  # (a missing file: CheckpointError)
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
