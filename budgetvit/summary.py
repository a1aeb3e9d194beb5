"""RUN_DIR/summary.json (the contract other tools read) and the one-screen end-of-run report."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from . import __version__
from .progress import fmt_duration


def code_version() -> str:
    """git sha of the checkout the package runs from (+ '-dirty'), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return __version__


def world_sizes(s: dict) -> list[int]:
    """Every process count a summary's run trained on (older summaries: world_size alone)."""
    return s.get("world_sizes") or [s.get("world_size", 1)]


def read_json(path: Path):
    """A JSON file of a run or bench folder; one that does not parse (a disk filled, an
    editor's save) is a ConfigError naming it, not a traceback."""
    from .config import ConfigError
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise ConfigError(f"{path} is not valid JSON ({e}); delete it (rerunning a run's "
                          f"command writes its summary.json again)") from None


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_summary(trainer, final: dict, bad_images: int, wall_s: float) -> dict:
    import torch  # (here: `budgetvit report` and `bench` read summaries without torch)
    from .models import count_params
    t, clock = trainer, trainer.clock
    budget_s = clock.budget_s()
    summary = {
        "top1": final["top1"], "top5": final["top5"],
        "top1_ema": final.get("top1_ema"), "top5_ema": final.get("top5_ema"),
        "budget": t.cfg.train.budget, "budget_s": budget_s,
        "train_time_s": clock.train_s,
        "overrun_s": None if budget_s is None else clock.train_s - budget_s,
        "last_step_s": t.last_step_s,
        "eval_time_s": clock.other_s.get("eval", 0.0),
        "checkpoint_time_s": clock.other_s.get("checkpoint", 0.0),
        "warmup_time_s": clock.other_s.get("warmup", 0.0),
        "wall_time_s": wall_s,
        "steps": clock.steps, "images_seen": t.images, "epochs": t.images / t.data.num_images,
        "final_img_size": t.cfg.curriculum.final_size_px,
        "eval_split": t.data.eval_split,
        # (epochs: what the paper rule's "N epochs per size" is met against)
        "stages": [{**st, "epochs": st["images"] / t.data.num_images} for st in t.stages],
        "plan": [s.to_dict() for s in t.plan],
        "final_lr": t.opt.param_groups[0]["lr"],
        "bad_images": bad_images,
        "faults": t.faults,
        "evals": t.evals,
        "model": t.cfg.model.name, "model_config": t.model_cfg.to_dict(),
        "params": count_params(t.model),
        "device": t.rt.describe(), "world_size": t.dist.world, "world_sizes": t.world_sizes,
        "torch": torch.__version__,
        "preset": t.cfg.preset, "config": t.cfg.to_dict(), "code_version": t.code_version,
    }
    if summary["top1_ema"] is None:
        del summary["top1_ema"], summary["top5_ema"]
    write_json_atomic(t.out / "summary.json", summary)
    print_summary(summary, t.out)
    return summary


def print_summary(s: dict, out: Path) -> None:
    budget = (s["config"]["train"]["budget"] if s["budget_s"] is None  # e.g. "500steps"
              else fmt_duration(s["budget_s"]))
    overrun = "" if s["overrun_s"] is None else f" (overrun {s['overrun_s']:+.2f}s)"
    stages = ", ".join(f"{st['img_size']}px {fmt_duration(st['end_s'] - st['start_s'])}"
                       + (f" {st['epochs']:.2f} ep" if "epochs" in st else "")
                       for st in s["stages"])
    scored = s["evals"][-1].get("eval_images") if s.get("evals") else None
    # (a holdout's description names its image count: said again only where some were left out)
    scored = f", {scored} images" if scored and f" {scored} images" not in s["eval_split"] else ""
    ema = f"   EMA top-1 {s['top1_ema']:.2f}%" if "top1_ema" in s else ""
    # What went wrong and was handled, where anything did: a clean block means a clean run.
    faults = s.get("faults", {})
    counts = {"unreadable training images (stood in)": s.get("bad_images", 0),
              "non-finite steps (skipped)": faults.get("nonfinite_steps", 0),
              "rollbacks": faults.get("rollbacks", 0),
              "failed checkpoint writes": faults.get("checkpoint_failures", 0)}
    handled = ", ".join(f"{what} {n}" for what, n in counts.items() if n)
    print("\n".join([
        "",
        f"== {s['preset']}: {s['model']} ({s['params'] / 1e6:.2f}M params) on {s['device']}",
        f"budget {budget}, trained {fmt_duration(s['train_time_s'])}{overrun}; eval "
        f"{s['eval_time_s']:.1f}s, checkpoints {s['checkpoint_time_s']:.1f}s, warm-up "
        f"{s['warmup_time_s']:.1f}s (not charged)",
        f"{s['steps']} steps, {s['images_seen']} images, {s['epochs']:.2f} epochs; stages: {stages}",
        f"top-1 {s['top1']:.2f}%   top-5 {s['top5']:.2f}%{ema}   (at {s['final_img_size']}px on "
        f"{s['eval_split']}{scored})",
        *([f"handled: {handled}"] if handled else []),
        f"summary: {out / 'summary.json'}",
    ]), flush=True)
