"""What a bench compares: arms, each a change of the base config written as `--set` overrides.

The ablation (plain ViT, + locality FFN, + curriculum, both), optional GELU variants, the
curriculum sweep around the preset's S0/M/N, and arms of the user's own (--arm 'NAME: KEY=VALUE
...'). An arm is a function of the base config, so the same arm means the same thing on every
preset; arm_config() is its full, validated config.
"""
from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass
from typing import Callable

from .config import Config, ConfigError, apply_overrides, validate


@dataclass(frozen=True)
class Arm:
    name: str
    about: str
    overrides: Callable[[Config], list[str]]  # base config -> the arm's --set pairs


def _model(cfg: Config, local: bool, act: str | None = None) -> list[str]:
    """The preset's model shape, plain or with the locality FFN. Fields a preset or --set may
    have pinned (ffn, act, bias) are cleared so the arm is exactly what its name says."""
    base = cfg.model.name.removesuffix("_local")
    out = [f"model.name={base}_local" if local else f"model.name={base}"]
    out += [f"model.{k}=none" for k in ("ffn", "act", "ffn_bias")
            if getattr(cfg.model, k) is not None and not (k == "act" and act)]
    return out + ([f"model.act={act}"] if act else [])


def _curriculum(cfg: Config, on: bool) -> list[str]:
    """Off: train at the final size throughout. On: the preset's own curriculum, or the paper's
    rule with the preset's S0/M/N when the preset has none (e.g. the DeiT baseline preset)."""
    if not on:
        return ["curriculum.mode=off"]
    return [] if cfg.curriculum.mode != "off" else ["curriculum.mode=paper"]


ABLATION = [
    Arm("vit", "plain ViT (GELU MLP), final size throughout: the DeiT recipe",
        lambda c: _model(c, False) + _curriculum(c, False)),
    Arm("vit+local", "+ locality FFN (3x3 depthwise conv, h-swish)",
        lambda c: _model(c, True) + _curriculum(c, False)),
    Arm("vit+curriculum", "+ image-size curriculum (the preset's)",
        lambda c: _model(c, False) + _curriculum(c, True)),
    Arm("vit+local+curriculum", "+ both (the paper's method)",
        lambda c: _model(c, True) + _curriculum(c, True)),
]
OPTIONAL = [
    Arm("vit+local-gelu", "locality FFN with GELU instead of h-swish",
        lambda c: _model(c, True, "gelu") + _curriculum(c, False)),
    Arm("vit+local-gelu+curriculum", "locality FFN with GELU, + curriculum",
        lambda c: _model(c, True, "gelu") + _curriculum(c, True)),
]


def _num(x: float) -> str:
    return f"{x:g}"


def _paper(s0: int, m: int, n: float, about: str) -> Arm:
    return Arm(f"paper-S{s0}-M{m}-N{_num(n)}", f"{about}: {s0} px, +{m} px every {_num(n)} epochs",
               lambda c: ["curriculum.mode=paper", f"curriculum.start_size_px={s0}",
                          f"curriculum.step_px={m}", f"curriculum.every_epochs={_num(n)}"])


def _stages(name: str, sizes: list[int], shares: list[float], about: str) -> Arm:
    # Shares printed with 4 decimals, the last one taking the rounding so they sum to 1.
    text = [f"{s:.4f}".rstrip("0").rstrip(".") for s in shares[:-1]]
    text.append(f"{1 - sum(float(t) for t in text):.4f}".rstrip("0").rstrip("."))
    stages = ",".join(f"{size}:{share}" for size, share in zip(sizes, text))
    return Arm(f"stages-{name}-{'-'.join(map(str, sizes))}", f"{about}: {stages}",
               lambda c: ["curriculum.mode=stages", f"curriculum.stages={stages}"])


def sweep_arms(cfg: Config) -> list[Arm]:
    """Curriculum settings around the preset's S0 (start), M (increment), N (epochs per size),
    one hyperparameter changed at a time as in the paper's analysis, plus three budget-share
    plans. The model is the preset's; the ablation's fixed-size arm is the reference."""
    from .curriculum import paper_sizes
    c = cfg.curriculum
    s0, m, n, final = c.start_size_px, c.step_px, c.every_epochs, c.final_size_px
    own = (f"stages {c.stages}" if c.mode == "stages" else
           f"{c.mode}, S0 {s0}, M {m}, N {_num(n)}")
    arms = [Arm("preset", f"the preset's own curriculum ({own})", lambda c: []),
            _paper(s0, m, n, "the preset's rule" if c.mode == "paper" else
                   "the paper rule at the config's S0, M, N (the preset trains in stages)"),
            _paper(s0, m, n / 2, "grow twice as fast"),
            _paper(s0, m, n * 2, "grow half as fast")]
    if s0 + m < final:
        arms.append(_paper(s0 + m, m, n, "start one step larger"))
    if s0 + 2 * m <= final:
        arms.append(_paper(s0, 2 * m, n, "twice the increment"))
    sizes = paper_sizes(s0, m, final)
    arms.append(_stages("equal", sizes, [1 / len(sizes)] * len(sizes), "equal budget shares"))
    rising = list(range(1, len(sizes) + 1))  # shares 1 : 2 : ... : n, most time at the end
    arms.append(_stages("rising", sizes, [r / sum(rising) for r in rising],
                        "budget shares rising with the size"))
    if len(sizes) > 2:
        arms.append(_stages("half", [s0, final], [0.5, 0.5], "half the budget at each end"))
    return [a for a in arms if arm_config(cfg, a, check=False)]  # e.g. sizes off the patch grid


def all_arms(cfg: Config) -> dict[str, Arm]:
    return {a.name: a for a in [*ABLATION, *OPTIONAL, *sweep_arms(cfg)]}


def adhoc_arm(spec: str, taken: set[str]) -> Arm:
    """--arm 'NAME: KEY=VALUE ...' -> an arm with exactly those overrides of the base config
    (none: the base config itself), for recipe sweeps that no named arm covers."""
    name, colon, rest = spec.partition(":")
    name = name.strip()
    if not colon or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ConfigError(f"--arm: expected 'NAME: KEY=VALUE ...' (NAME of letters, digits and "
                          f"._+-), got {spec!r}")
    if name in taken:
        raise ConfigError(f"--arm {name}: that name is taken (a built-in arm or an earlier "
                          f"--arm); pick another")
    if name.endswith((".json", ".md", ".png")):  # its folder would be a file of the bench's
        raise ConfigError(f"--arm {name}: names ending in .json, .md or .png are the bench "
                          f"folder's files (results.json, ...); pick another")
    try:
        sets = shlex.split(rest)
    except ValueError as e:  # an unbalanced quote
        raise ConfigError(f"--arm {name}: {e} in {spec!r}") from None
    return Arm(name, f"--set {' '.join(sets)}" if sets else "the base config", lambda c: sets)


def arm_config(base: Config, arm: Arm, check: bool = True, paths: bool = False) -> Config | None:
    """The arm's full config, validated (its data paths too with `paths`); an invalid one
    raises (check) or gives None."""
    try:
        cfg = apply_overrides(copy.deepcopy(base), arm.overrides(base))
        validate(cfg, paths=paths)
    except ConfigError as e:
        if check:
            raise ConfigError(f"arm {arm.name}: {e}") from None
        return None
    return cfg
