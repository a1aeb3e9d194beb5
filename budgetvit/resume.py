"""What rerunning the command of a run directory checks against the checkpoint it finds:
whether this config can go on from it at all, which changed settings apply from here on (and
which the run keeps), and whether the run has already finished."""
from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError, SameOnEveryRank, parse_budget
from .progress import fmt_duration


def config_changes(now: dict, saved: dict) -> list[str]:
    """The `section.key`s whose values differ between two Config.to_dict()s."""
    return [f"{sec}.{k}" for sec in now if isinstance(now[sec], dict)
            for k in now[sec] if saved.get(sec, {}).get(k) != now[sec][k]]


def check_resumable(model, data, state: dict, now: dict, out: Path) -> None:
    """A checkpoint of another model shape or class list cannot be resumed (say which keys
    differ rather than fail inside load_state_dict), nor one whose place in the data would
    mean another place in this config's: another batch size or number of training images,
    another holdout (the run would train on images it held out) or seed (the epoch's order is
    drawn from it: the rest of the epoch would repeat some images and skip others)."""
    was = state["config"]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state["model"].items()}
    if shapes != saved or state["classes"] != list(data.classes):
        what = "the model's shape" if shapes != saved else "the classes"
        # The keys that can be why: a new budget, say, is none (the data's files may be).
        changed = [k for k in config_changes(now, was) if k.startswith(("model.", "data."))]
        raise ConfigError(
            f"--out {out} holds a run of {was['model']['name']} on {was['data']['dataset']} "
            f"that this config cannot resume ({what} differs; changed: "
            f"{', '.join(changed) or 'no model or data key'}); use another --out, or that "
            f"run's config")
    images = state["data"].get("num_images", data.num_images)  # (older checkpoints lack it)
    reasons = [f"{sec}.{k} {was[sec].get(k, default)} -> {now[sec][k]}"
               for sec, k, default in [("train", "batch_size", None), ("train", "seed", 0),
                                       ("data", "holdout", 0.0)]
               if was[sec].get(k, default) != now[sec][k]]
    if images != data.num_images:
        reasons.append(f"{images} -> {data.num_images} training images")
    if reasons:
        raise ConfigError(
            f"--out {out} holds a run this config cannot go on from ({', '.join(reasons)}): "
            f"its place in the data would point elsewhere, or the run would train on images it "
            f"held out; use another --out, or that run's values")
    check_budget_left(state, now["train"]["budget"])


def check_budget_left(state: dict, budget: str) -> None:
    """An unfinished run given a budget it has spent already would stop at once, its learning
    rate not annealed (the schedules would have ended in the past): refused."""
    clock = state["clock"]
    spent = lambda unit: clock["steps"] if unit == "steps" else clock["train_s"]  # noqa: E731
    was, was_unit = parse_budget(state["config"]["train"]["budget"])
    new, unit = parse_budget(budget)
    if spent(unit) >= new and spent(was_unit) < was:
        trained = f"{clock['steps']} steps" if unit == "steps" else fmt_duration(clock["train_s"])
        raise SameOnEveryRank(
            f"budget {budget} is spent already: this run has trained {trained} of its "
            f"{state['config']['train']['budget']}, and would stop at once, its learning rate "
            f"not annealed; give a larger budget, or another --out for a new run")


def config_warnings(now: dict, saved: dict) -> list[str]:
    """Warnings for a resume with a changed config."""
    changed = config_changes(now, saved)
    # The size plan is made once, at the start (the paper rule from measured rates).
    kept = [k for k in changed if k.startswith("curriculum.")]
    applied = [k for k in changed if k not in kept]
    out = []
    if applied:
        out.append(f"warning: resuming with a config that differs from the checkpoint's in "
                   f"{', '.join(applied)}; the new values apply from here on")
    if kept:
        out.append(f"warning: {', '.join(kept)} changed, but a run keeps the curriculum it "
                   f"started with; to train another, use another --out")
    return out


def finished_summary(out: Path, steps: int) -> dict | None:
    """The summary.json of a run that finished at `steps` (the checkpoint's); None if there is
    none, or it is an earlier run's."""
    path = out / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:  # damaged: the run writes it again
        return None
    return summary if summary.get("steps") == steps else None
