"""Typed run configuration: dataclasses, `--set key=value` overrides, and validation.

Every check happens here, before any work starts, and fails with a one-line ConfigError that
names the key and what is allowed; the CLI turns it into exit code 2 without a traceback.
No value is ever evaluated as code: strings are parsed by the field's declared type.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A bad configuration value, path or argument; its message is one line for the user."""


class SameOnEveryRank(ConfigError):
    """A fault of the command line or config (against the run's checkpoint, which every rank
    reads) that every torchrun process finds alike: rank 0 alone says it. (Not a path: another
    node may lack what rank 0 has.)"""


class CheckpointError(RuntimeError):
    """A checkpoint or export that cannot be read; one line for the user. (Here, not in
    checkpoint.py, so that the command line can catch it without importing torch.)"""


@dataclass
class ModelSection:
    name: str = "vit_micro4_local"
    # Overrides of the named model (models/registry.py); None keeps the model's own value.
    dim: int | None = None  # token width
    depth: int | None = None  # blocks
    heads: int | None = None  # attention heads (dim must divide by them)
    patch_size: int | None = None  # px per patch side
    base_img_size: int | None = None  # the size the position embedding is stored at
    mlp_ratio: float | None = None  # FFN hidden width / dim; None = 4 (the fmnist preset: 1)
    ffn: str | None = None  # mlp | local; None = local for *_local names, else mlp
    act: str | None = None  # FFN activation: gelu | hswish; None = hswish for *_local names
    ffn_bias: bool | None = None  # FFN biases; None = off for *_local names, else on
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear from 0)


@dataclass
class DataSection:
    dataset: str = "fashion_mnist"  # fashion_mnist | imagefolder | cache | synthetic
    path: str = ""  # dataset root; empty = the dataset's default location
    num_workers: int = -1  # loader worker processes (DALI: threads); -1 = one per usable
    # CPU, shared among a machine's ranks (tree.default_workers)
    backend: str = "pil"  # cache decoding: pil (worker processes) | dali (NVIDIA DALI, GPU)
    holdout: float = 0.0  # share of train held out and evaluated instead of test/val (tuning)
    synthetic_images: int = 10_000  # size of the synthetic dataset
    synthetic_classes: int = 10  # classes of the synthetic dataset


@dataclass
class CurriculumSection:
    mode: str = "stages"  # off | paper | stages
    final_size_px: int = 28  # last training size, and the evaluation size
    # mode=paper, the rule of Irandoust et al.: start at S0, add M px every N epochs.
    start_size_px: int = 16
    step_px: int = 4
    every_epochs: float = 1.0
    # mode=stages: "size:share,..." with shares of the budget summing to 1.
    stages: str = "16:0.1,20:0.15,24:0.25,28:0.5"


@dataclass
class OptimSection:
    lr: float = 2e-3  # peak learning rate for the global batch train.batch_size
    min_lr: float = 1e-5  # reached exactly when the budget is spent
    warmup: float = 0.05  # share of the budget spent warming up linearly
    decay: str = "cosine"  # cosine | linear
    weight_decay: float = 0.05  # AdamW's, on weights only (not biases, norms, embeddings)
    beta1: float = 0.9  # AdamW's betas
    beta2: float = 0.999
    grad_clip: float = 1.0  # max global grad norm; 0 = off


@dataclass
class AugSection:
    crop_scale_min: float = 1.0  # crop area drawn in [this, 1]; in-memory data still cropped at 1
    hflip: bool = True  # random horizontal flips
    randaugment_ops: int = 0  # RandAugment: ops per image (0 = off) ...
    randaugment_magnitude: int = 9  # ... and their magnitude
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) for cutmix; 0 = off
    label_smoothing: float = 0.1  # share of the target spread over all classes
    random_erasing: float = 0.0  # probability per image


@dataclass
class TrainSection:
    budget: str = "5m"  # training-time budget: 90s, 5m, 24h, 1d; or NNNsteps (reproducible mode)
    batch_size: int = 128  # global batch; each of W processes takes batch_size / W
    eval_batch_size: int = 500  # images per evaluation batch (per process)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (CUDA: bf16, fp16 if no bf16; CPU: fp32) | fp32 | bf16 | fp16
    compile: str = "auto"  # auto (on for CUDA) | on | off
    compile_scope: str = "blocks"  # blocks (each block, one compile serves all) | model
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead = CUDA graphs
    ema: bool = True  # keep an exponential moving average of the weights, evaluated at the end
    ema_decay: float = 0.99  # its decay per step
    seed: int = 0  # seeds the model, data order and augmentation
    deterministic: bool = False  # deterministic kernels (exact-resume tests; CPU only)
    log_every: int = 20  # steps between log.jsonl lines
    eval_every_s: float = 0.0  # training seconds between evaluations (0 = only at the end)
    # Steps per image size before the clock starts (not charged; timed for the paper rule). A
    # compiling run first compiles each size before the clock, even with 0.
    warmup_steps: int = 3
    sync_every: int = 0  # steps between host-device syncs; 0 = auto (1 on CPU, 8 on CUDA)
    max_bad_steps: int = 5  # consecutive non-finite steps before a rollback
    max_rollbacks: int = 3  # rollbacks before the run stops
    rollback_lr_factor: float = 0.5  # lr multiplier applied at each rollback


@dataclass
class CheckpointSection:
    # Periodic checkpoints (0 = none; step 0, the end and a stop are always written):
    every_s: float = 600.0  # training seconds between checkpoints
    every_steps: int = 0  # steps between checkpoints
    keep: int = 2  # newest checkpoints kept on disk


@dataclass
class Config:
    preset: str = "custom"  # a preset names itself (presets.py); bare defaults are none
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    curriculum: CurriculumSection = field(default_factory=CurriculumSection)
    optim: OptimSection = field(default_factory=OptimSection)
    aug: AugSection = field(default_factory=AugSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "preset"]


# ---------------------------------------------------------------- parsing values by type

def _parse(text: str, kind, key: str):
    """Parse `text` as the declared type `kind` (int, float, bool, str, or X | None)."""
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if text.lower() in ("none", "null", ""):
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {text!r}")
    if kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(f"{key}: expected {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):  # nan passes every range check (all comparisons fail)
            raise ConfigError(f"{key}: expected a finite number, got {text!r}")
        return value
    return text


def _hints(section) -> dict:
    return typing.get_type_hints(type(section))


def sets(pairs: list[str], key: str) -> bool:
    """Whether ["section.key=value", ...] gives `key` a value."""
    return any(pair.split("=", 1)[0].strip() == key for pair in pairs)


def check_one_budget(budget: str | None, pairs: list[str]) -> None:
    """--budget and --set train.budget are one setting: both given is refused (which wins?)."""
    if budget and sets(pairs, "train.budget"):
        raise ConfigError("--budget and --set train.budget both give the budget; give one")


def apply_overrides(cfg: Config, pairs: list[str]) -> Config:
    """Apply ["section.key=value", ...] to cfg in place; unknown keys fail with the choices."""
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        section_name, _, name = key.strip().partition(".")
        if section_name not in SECTIONS:
            raise ConfigError(f"unknown config section {section_name!r} in {key!r}; "
                              f"sections: {', '.join(SECTIONS)}")
        section = getattr(cfg, section_name)
        hints = _hints(section)
        if name not in hints:
            raise ConfigError(f"unknown config key {key!r}; {section_name} keys: "
                              f"{', '.join(hints)}")
        setattr(section, name, _parse(text.strip(), hints[name], key))
    return cfg


def from_dict(d: dict) -> Config:
    """Rebuild a Config saved with to_dict (e.g. from a checkpoint), checking every type."""
    cfg = Config(preset=d.get("preset", "custom"))
    for name in SECTIONS:
        section = getattr(cfg, name)
        hints = _hints(section)
        for key, value in d.get(name, {}).items():
            if key not in hints:
                raise ConfigError(f"unknown config key '{name}.{key}' in a saved config "
                                  f"(written by another version of budgetvit?)")
            setattr(section, key, _parse(str(value), hints[key], f"{name}.{key}")
                    if value is not None else None)
    return cfg


# ---------------------------------------------------------------- budgets and stages

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# torch.compile's modes; "reduce-overhead" replays CUDA graphs (fewer kernel launches).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("blocks", "model")  # see Runtime.compiled


_NUMBER = r"(\d+(?:\.\d+)?)"
# Units largest first, each at most once: 90s, 5m, 1h30m, 5m00s (as the run's header prints).
_DURATION = re.compile(r"\s*" + "".join(f"(?:{_NUMBER}\\s*{u}\\s*)?" for u in "dhms"))


def parse_budget(text: str) -> tuple[float, str]:
    """'90s' -> (90.0, 'seconds'); '1h30m' -> (5400.0, 'seconds'); '500steps' -> (500,
    'steps')."""
    steps = re.fullmatch(rf"\s*{_NUMBER}\s*steps\s*", str(text))
    parts = _DURATION.fullmatch(str(text))
    if steps is None and (parts is None or not any(parts.groups())):
        raise ConfigError(f"train.budget: expected a duration like 90s, 5m, 1h30m, 24h, 1d or "
                          f"a step count like 500steps, got {text!r}")
    if steps is not None:
        value, unit = float(steps.group(1)), "steps"
    else:
        value, unit = sum(float(n) * _UNITS[u] for n, u in zip(parts.groups(), "dhms")
                          if n is not None), "seconds"
    if value <= 0:
        raise ConfigError(f"train.budget must be positive, got {text!r}")
    if unit == "steps" and value != int(value):
        raise ConfigError(f"train.budget: step count must be whole, got {text!r}")
    return value, unit


def parse_stages(text: str) -> list[tuple[int, float]]:
    """'16:0.5,28:0.5' -> [(16, 0.5), (28, 0.5)]."""
    out = []
    for item in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d*\.?\d+)\s*", item)
        if not m:
            raise ConfigError(f"curriculum.stages: expected 'size:share,...' like "
                              f"'16:0.5,28:0.5', got {text!r}")
        out.append((int(m.group(1)), float(m.group(2))))
    return out


# ---------------------------------------------------------------- validation

def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: "
                          f"{', '.join(map(str, allowed))}")


def _range(key: str, value, lo=None, hi=None, lo_open=False) -> None:
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{key}={value} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}={value} must be <= {hi}")


def _check_paths(d: DataSection) -> None:
    """Paths are checked before the run directory or any data is touched."""
    if d.dataset == "imagefolder" and not d.path:
        raise ConfigError("data.dataset=imagefolder needs a root: --set data.path=/path/to/imagenet")
    if d.dataset == "cache" and not d.path:
        raise ConfigError("data.dataset=cache needs the directory `budgetvit prepare` made: "
                          "--set data.path=/path/to/cache")
    if d.path and not os.path.isdir(d.path):
        gone = "does not exist" if not os.path.exists(d.path) else "is not a directory"
        raise ConfigError(f"data.path: {d.path} {gone}")
    if d.dataset not in ("imagefolder", "cache"):
        return
    # A tree given as a cache or a cache as a tree: the fix is the other data.dataset.
    from .data.cache import META  # (numpy and PIL, no torch)
    tree = os.path.isdir(os.path.join(d.path, "train"))
    cache = os.path.isfile(os.path.join(d.path, META))
    if d.dataset == "cache":
        if tree and not cache:
            raise ConfigError(f"data.path: {d.path} is an image tree (train/), not a budgetvit "
                              f"cache: train on it with --set data.dataset=imagefolder, or make "
                              f"a cache of it with: budgetvit prepare --src {d.path} --dst "
                              f"ANOTHER_FOLDER")
        return
    if not tree:
        if cache:
            raise ConfigError(f"data.path: {d.path} is a budgetvit cache, not an image tree: "
                              f"train on it with --set data.dataset=cache")
        parent = os.path.dirname(os.path.normpath(d.path))
        split = os.path.basename(os.path.normpath(d.path)) in ("train", "val")
        hint = f"; give the folder that holds it, {parent}" if split else ""
        raise ConfigError(f"data.path: no train/ folder in {d.path} (expected "
                          f"{os.path.join(d.path, 'train')}/<class>/<image>){hint}")
    if not d.holdout and not os.path.isdir(os.path.join(d.path, "val")):
        raise ConfigError(f"data.path: no val/ folder in {d.path} (expected "
                          f"{os.path.join(d.path, 'val')}/<class>/<image>); to evaluate on "
                          f"held-out training images instead: --set data.holdout=0.1")


def check_world(cfg: Config, world: int) -> None:
    """What the number of torchrun processes allows (every one finds the same)."""
    batch = cfg.train.batch_size
    if batch % world:  # (each process takes an equal share)
        raise SameOnEveryRank(f"train.batch_size={batch} is not divisible by the world size "
                              f"{world}: give a multiple of {world}, or as many processes as "
                              f"divide {batch} (a run resumes with its own batch size)")


def validate(cfg: Config, paths: bool = True) -> None:
    """Check every value that can be checked without touching data; raise ConfigError.
    paths=False leaves out whether data.path is given and exists (--print-config, --list)."""
    from .models import model_names
    m, d, c, o, a, t, k = (cfg.model, cfg.data, cfg.curriculum, cfg.optim, cfg.aug, cfg.train,
                           cfg.checkpoint)
    _choice("model.name", m.name, model_names())
    for key in ("dim", "depth", "heads", "patch_size", "base_img_size"):
        if getattr(m, key) is not None:
            _range(f"model.{key}", getattr(m, key), 1)
    if m.ffn is not None:
        _choice("model.ffn", m.ffn, ["mlp", "local"])
    if m.act is not None:
        _choice("model.act", m.act, ["gelu", "hswish"])
    if m.mlp_ratio is not None:
        _range("model.mlp_ratio", m.mlp_ratio, 0, lo_open=True)
    _range("model.drop_path", m.drop_path, 0.0, 0.99)
    shape = model_shape(cfg)
    if int(shape.dim * shape.mlp_ratio) < 1:
        raise ConfigError(f"model.mlp_ratio={shape.mlp_ratio} leaves the FFN of model.dim="
                          f"{shape.dim} no hidden unit")
    if shape.dim % shape.heads:
        raise ConfigError(f"model.dim={shape.dim} is not divisible by model.heads={shape.heads}")
    P = shape.patch_size
    if shape.base_img_size % P:
        given = "" if m.base_img_size is not None else f" ({m.name}'s; set it to change it)"
        raise ConfigError(f"model.base_img_size={shape.base_img_size}{given} is not a multiple "
                          f"of model.patch_size={P}")

    _choice("data.dataset", d.dataset, ["fashion_mnist", "imagefolder", "cache", "synthetic"])
    if paths:
        _check_paths(d)
    _choice("data.backend", d.backend, ["pil", "dali"])
    if d.backend == "dali" and d.dataset != "cache":
        raise ConfigError("data.backend=dali reads a prepared cache: set data.dataset=cache "
                          "and data.path to what `budgetvit prepare` made")
    _range("data.num_workers", d.num_workers, -1)
    _range("data.holdout", d.holdout, 0, 0.5)
    _range("data.synthetic_images", d.synthetic_images, 1)
    _range("data.synthetic_classes", d.synthetic_classes, 2)

    _choice("curriculum.mode", c.mode, ["off", "paper", "stages"])
    _range("curriculum.final_size_px", c.final_size_px, 1)
    sizes = {"curriculum.final_size_px": c.final_size_px}
    if c.mode == "paper":
        sizes["curriculum.start_size_px"] = c.start_size_px
        sizes["curriculum.step_px"] = c.step_px
        _range("curriculum.start_size_px", c.start_size_px, 1)
        _range("curriculum.step_px", c.step_px, 1)
        _range("curriculum.every_epochs", c.every_epochs, 0, lo_open=True)
        if c.start_size_px > c.final_size_px:
            raise ConfigError(f"curriculum.final_size_px={c.final_size_px} is below "
                              f"curriculum.start_size_px={c.start_size_px}")
    elif c.mode == "stages":
        stages = parse_stages(c.stages)
        for size, share in stages:
            sizes[f"curriculum.stages size {size}"] = size
            _range("curriculum.stages size", size, 1)
            if share <= 0:
                raise ConfigError(f"curriculum.stages gives size {size} a share of {share:g}; "
                                  f"every share must be > 0")
        if abs(sum(s for _, s in stages) - 1.0) > 1e-6:
            raise ConfigError(f"curriculum.stages shares must sum to 1, got "
                              f"{sum(s for _, s in stages):g} in {c.stages!r}")
        if stages[-1][0] != c.final_size_px:
            raise ConfigError(f"curriculum.stages must end at curriculum.final_size_px="
                              f"{c.final_size_px}, but ends at {stages[-1][0]}")
    for key, size in sizes.items():
        if size % P:
            raise ConfigError(f"{key}={size} is not a multiple of model.patch_size={P}")

    _range("optim.lr", o.lr, 0, lo_open=True)
    _range("optim.min_lr", o.min_lr, 0)
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr={o.min_lr} is above optim.lr={o.lr}")
    _range("optim.warmup", o.warmup, 0, 0.99)
    _choice("optim.decay", o.decay, ["cosine", "linear"])
    _range("optim.weight_decay", o.weight_decay, 0)
    _range("optim.beta1", o.beta1, 0, 0.9999)
    _range("optim.beta2", o.beta2, 0, 0.99999)
    _range("optim.grad_clip", o.grad_clip, 0)

    _range("aug.crop_scale_min", a.crop_scale_min, 0.01, 1.0)
    _range("aug.randaugment_ops", a.randaugment_ops, 0, 10)
    _range("aug.randaugment_magnitude", a.randaugment_magnitude, 0, 30)
    _range("aug.mixup", a.mixup, 0)
    _range("aug.cutmix", a.cutmix, 0)
    _range("aug.label_smoothing", a.label_smoothing, 0, 0.99)
    _range("aug.random_erasing", a.random_erasing, 0, 1)

    _, budget_unit = parse_budget(t.budget)
    _range("train.batch_size", t.batch_size, 1)
    _range("train.eval_batch_size", t.eval_batch_size, 1)
    _choice("train.device", t.device, ["auto", "cpu", "cuda"])
    _choice("train.precision", t.precision, ["auto", "fp32", "bf16", "fp16"])
    _choice("train.compile", t.compile, ["auto", "on", "off"])
    _choice("train.compile_scope", t.compile_scope, list(COMPILE_SCOPES))
    _choice("train.compile_mode", t.compile_mode, list(COMPILE_MODES))
    _range("train.ema_decay", t.ema_decay, 0, 0.999999)
    _range("train.seed", t.seed, 0)
    _range("train.log_every", t.log_every, 1)
    _range("train.eval_every_s", t.eval_every_s, 0)
    _range("train.warmup_steps", t.warmup_steps, 0)
    if c.mode == "paper" and t.warmup_steps == 0 and budget_unit == "seconds":
        raise ConfigError("curriculum.mode=paper with a time budget needs train.warmup_steps "
                          ">= 1: the warm-up measures each size's throughput to place its epochs")
    _range("train.sync_every", t.sync_every, 0)
    _range("train.max_bad_steps", t.max_bad_steps, 1)
    _range("train.max_rollbacks", t.max_rollbacks, 0)
    _range("train.rollback_lr_factor", t.rollback_lr_factor, 0, 1, lo_open=True)
    _range("checkpoint.every_s", k.every_s, 0)
    _range("checkpoint.every_steps", k.every_steps, 0)
    _range("checkpoint.keep", k.keep, 1)


def model_shape(cfg: Config, num_classes: int = 1000, in_chans: int = 3):
    """The ViTConfig this run trains: the named shape with the config's overrides."""
    from .models import model_config
    m = cfg.model
    overrides = {k: getattr(m, k) for k in ("dim", "depth", "heads", "patch_size",
                                            "base_img_size", "mlp_ratio", "ffn", "act",
                                            "ffn_bias") if getattr(m, k) is not None}
    return model_config(m.name, drop_path=m.drop_path, num_classes=num_classes,
                        in_chans=in_chans, **overrides)
