"""Models rebuilt from checkpoints (or exported weights) for evaluation, prediction and export."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from .config import Config, ConfigError, from_dict
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
    path: Path  # the checkpoint (or exported weights) file read
    weights: str = ""  # exported weights: which ("ema" or "model"); "" for a checkpoint

    def chosen(self, no_ema: bool = False) -> tuple[VisionTransformer, str]:
        """(the EMA model where the run kept one, unless no_ema; "ema" or "model"). Exported
        weights are one of the two: the one they are."""
        if self.weights:
            if no_ema and self.weights == "ema":
                raise ConfigError(f"--no-ema: {self.path} holds the EMA weights alone; export "
                                  f"the checkpoint again with --no-ema for the raw ones")
            return self.model, self.weights
        if no_ema or self.ema is None:
            return self.model, "model"
        return self.ema, "ema"

    def describe(self, which: str = "") -> str:
        """What was read: "checkpoint PATH (step N)", or with `which` weights ("ema" or
        "model") "... (ema weights of step N)"; exported weights always say which they are."""
        which = which or self.weights
        kind = "exported weights" if self.weights else "checkpoint"
        return f"{kind} {self.path} ({f'{which} weights of ' if which else ''}step {self.step})"


def load(path: str | Path, device="cpu") -> Loaded:
    """The model (and EMA) of a checkpoint file, or of a run directory's newest checkpoint
    that reads (a damaged newer one is named on stderr and skipped, as a resume does), or the
    one model of weights written by `export` (PATH.safetensors beside PATH.json)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_exported(path, device)
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
        if not isinstance(state, dict):  # (torch.save of a bare tensor, say)
            raise TypeError(f"it holds a {type(state).__name__}")
        mcfg = ViTConfig(**state["model_config"])
        model = VisionTransformer(mcfg)
        model.load_state_dict(state["model"])
        ema = None
        if state.get("ema") is not None:
            ema = VisionTransformer(mcfg)
            ema.load_state_dict(state["ema"]["weights"])
        cfg, classes, step = from_dict(state["config"]), state["classes"], state["clock"]["steps"]
        mean, std = tuple(state["mean"]), tuple(state["std"])
    except ConfigError:
        raise  # (a saved config of another version: its message says so)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        why = " ".join(str(e).split())  # (load_state_dict's message spans lines)
        raise checkpoint.CheckpointError(f"{path} is not a budgetvit checkpoint "
                                         f"({type(e).__name__}: {why})") from None
    for m in (model, ema):
        if m is not None:
            m.to(device).eval()
    return Loaded(model, ema, cfg, classes, mean, std, step, file)


def load_exported(path: Path, device="cpu") -> Loaded:
    """Weights written by `export`: PATH (safetensors) and the JSON beside it."""
    from .export import load_weights, read_json
    json_path = path.with_suffix(".json")
    if not path.exists():
        raise checkpoint.CheckpointError(f"exported weights {path} do not exist")
    try:
        meta = read_json(path)  # (a missing JSON: FileNotFoundError, one line in the CLI)
    except ValueError as e:  # cut or garbled (json's error, UnicodeDecodeError)
        raise checkpoint.CheckpointError(f"cannot read {json_path}: {e}") from None
    if "classes" not in meta:
        raise checkpoint.CheckpointError(
            f"{json_path} holds the model config alone (an export older than 2026-11-30, "
            f"without classes and normalisation): export its checkpoint again")
    try:
        cfg, classes = from_dict(meta["config"]), list(meta["classes"])
        mean, std, step, weights = (tuple(meta["mean"]), tuple(meta["std"]), int(meta["step"]),
                                    str(meta["weights"]))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise checkpoint.CheckpointError(f"{json_path} is not the JSON of a budgetvit export "
                                         f"({type(e).__name__}: {e})") from None
    try:
        model = load_weights(path)
    except Exception as e:  # a cut or foreign file: safetensors' own errors are not one type
        raise checkpoint.CheckpointError(f"cannot load exported weights {path}: {e}") from None
    return Loaded(model.to(device).eval(), None, cfg, classes, mean, std, step, path, weights)
