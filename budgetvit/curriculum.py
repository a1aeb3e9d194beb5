"""The image-size curriculum: which size to train at, as a function of budget progress.

A plan is a list of stages (size, start, end) with start/end as budget shares in [0, 1].
It is made before the clock starts, and saved in every checkpoint so that resume continues the
same plan (the paper's code forgot its stage on resume). The paper's rule in a time budget,
whose plan converts epochs to seconds at the warm-up's rates, is made again as each size's
epochs are trained (WarmUp.keep_to_epochs).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stage:
    size: int
    start: float  # budget share at which this size begins
    end: float

    def to_dict(self) -> dict:
        return asdict(self)


def from_shares(pairs: list[tuple[int, float]]) -> list[Stage]:
    """[(size, share), ...] with shares summing to 1 -> contiguous stages covering [0, 1]."""
    stages, start = [], 0.0
    for i, (size, _) in enumerate(pairs):
        # Rounded so that the sum of shares 0.1 + 0.2 ends at 0.3 (not 0.30000000000000004,
        # which would keep the step at exactly 30% of a step budget in the stage before).
        end = 1.0 if i == len(pairs) - 1 else round(math.fsum(s for _, s in pairs[:i + 1]), 12)
        stages.append(Stage(size, start, end))
        start = end
    return stages


def paper_sizes(start: int, step: int, final: int) -> list[int]:
    """S0, S0 + M, ... up to and including the final size (all multiples of the patch size
    when S0, M and final are)."""
    sizes = list(range(start, final, step))
    return sizes + [final]


def paper_shares(sizes: list[int], every_epochs: float, seconds_per_epoch: dict[int, float],
                 budget: float) -> list[tuple[int, float]]:
    """The paper's rule "add M px every N epochs", converted into budget shares.

    Each size but the last lasts N epochs, whose cost is N * seconds_per_epoch[size] (budget
    units: seconds, or steps in step-budget mode); the final size gets what is left. If the
    budget ends before the final size is reached, the plan stops at the size being trained.
    """
    out, spent = [], 0.0
    for size in sizes[:-1]:
        share = every_epochs * seconds_per_epoch[size] / budget
        if spent + share >= 1.0:
            out.append((size, 1.0 - spent))
            return out
        out.append((size, share))
        spent += share
    out.append((sizes[-1], 1.0 - spent))
    return out


def resumed_rates(sizes: list[int], every_epochs: float, old: dict[int, float],
                  new: dict[int, float], now: float, done: float) -> dict[int, float]:
    """Seconds per epoch that make the paper rule's plan continue, at `now` (budget units), a
    run planned at rates `old` that goes on at rates `new` (measured for the size being trained
    and every later one): on another number of processes, say. `done`: the epochs trained so
    far at the size being trained.

    Read from the start, the result gives the finished sizes their stages as they were, the
    size being trained its elapsed time plus what is left of its N epochs at its new rate, the
    later sizes N epochs each at the new rates."""
    out, end = dict(old), 0.0
    for i, size in enumerate(sizes):
        last = i == len(sizes) - 1  # (the final size gets what is left: no rule end)
        start, end = end, math.inf if last else end + every_epochs * old[size]
        if end <= now:  # finished: history
            continue
        rate = new.get(size, old[size])  # (a size ending within rounding of now: not timed)
        if start <= now and not last:  # being trained
            left = max(0.0, every_epochs - done) * rate
            out[size] = (now - start + left) / every_epochs
        else:
            out[size] = rate
    return out


def corrected_rates(sizes: list[int], every_epochs: float, rates: dict[int, float],
                    measured: dict[int, float], current: int, start: float, end: float,
                    observed: float) -> dict[int, float]:
    """Seconds per epoch that make the paper rule's plan train the size being trained,
    `current`, from `start` to `end` (budget units), as it did and will: the sizes before it
    scaled to end at `start` (a plan made at other rates can say otherwise), the later ones at
    their `measured` rates, scaled as the current one's turned out (`observed` seconds per
    epoch as trained, over its measured rate)."""
    i = sizes.index(current)
    before = every_epochs * math.fsum(rates[s] for s in sizes[:i])
    out = dict(rates)
    for size in sizes[:i]:
        out[size] = rates[size] * start / before
    out[current] = (end - start) / every_epochs
    for size in sizes[i + 1:]:
        out[size] = measured[size] * observed / measured[current]
    return out


def size_at(stages: list[Stage], p: float) -> int:
    for stage in stages:
        if p < stage.end:
            return stage.size
    return stages[-1].size


def planned_sizes(cfg) -> list[int]:
    """Every size the config may train at (compiled and timed before the clock starts)."""
    from .config import parse_stages
    c = cfg.curriculum
    if c.mode == "off":
        return [c.final_size_px]
    if c.mode == "paper":
        return paper_sizes(c.start_size_px, c.step_px, c.final_size_px)
    return list(dict.fromkeys(size for size, _ in parse_stages(c.stages)))


def make_plan(cfg, seconds_per_epoch: dict[int, float], budget: float) -> list[Stage]:
    """The stages of this run; seconds_per_epoch (measured) is only used by the paper rule."""
    from .config import parse_stages
    c = cfg.curriculum
    if c.mode == "off":
        return [Stage(c.final_size_px, 0.0, 1.0)]
    if c.mode == "paper":
        sizes = paper_sizes(c.start_size_px, c.step_px, c.final_size_px)
        return from_shares(paper_shares(sizes, c.every_epochs, seconds_per_epoch, budget))
    return from_shares(parse_stages(c.stages))
