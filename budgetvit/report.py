"""budgetvit report RUN_DIR...: how runs spent their budget, as two plots and a table.

- time_to_accuracy.png: top-1 (%) against training time, one solid line per run that has at
  least one evaluation (from eval.jsonl); with --ema, the run's EMA evaluations as diamonds
  joined by a dashed line (the trainer evaluates the EMA at the end only: one diamond).
- schedule.png: image size (px) and learning rate against training time, one line per run
  (with a log.jsonl or summary.json) in each of the two stacked axes; the size comes from
  the summary's stages when the run has finished, else from its log.
- report.md: one table row per run (final top-1, EMA, images, epochs, times, sizes).

Training time is the budget clock (evaluation excluded), so runs on one axis compare at
equal charged time. Figures are built without pyplot (no global state, no display needed).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .summary import read_json, world_sizes

if TYPE_CHECKING:  # imported where a figure is drawn: train and speed run without matplotlib
    from matplotlib.figure import Figure


COMMAND, HELP = "report", "plots (time-to-accuracy, schedules) and a Markdown table of runs"


# ---------------------------------------------------------------- reading runs

def is_run(d: Path) -> bool:
    return (d / "summary.json").exists() or (d / "log.jsonl").exists()


def discover(paths) -> list[Path]:
    """Run directories among `paths`: each path is a run dir itself, or a folder searched
    recursively (a run dir's own subfolders, e.g. checkpoints/, are not searched)."""
    found: list[Path] = []
    seen: set[Path] = set()  # folders reached again through a symbolic link

    def walk(d: Path) -> None:
        if (key := d.resolve()) in seen:
            return
        seen.add(key)
        if is_run(d):
            found.append(d)
            return
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            walk(sub)

    for p in map(Path, paths):
        if not p.is_dir():
            from .config import ConfigError
            raise ConfigError(f"{'not a directory' if p.exists() else 'no such directory'}: {p}")
        walk(p)
    return found


def _timeline(path: Path) -> list[dict]:
    """Records of a .jsonl file along the run's final timeline: a resumed run repeats the
    steps after its last checkpoint, so a record whose step is not past the previous one
    drops the earlier records it replays. A half-written last line (a live run) is skipped."""
    out: list[dict] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        while out and out[-1]["step"] >= rec["step"]:
            out.pop()
        out.append(rec)
    return out


def load_run(d: Path, name: str) -> dict:
    summary = read_json(d / "summary.json") if (d / "summary.json").exists() else {}
    evals = _timeline(d / "eval.jsonl") or summary.get("evals", [])
    return {"name": name, "dir": d, "summary": summary, "log": _timeline(d / "log.jsonl"),
            "evals": evals}


def _names(dirs: list[Path]) -> list[str]:
    """Short unique labels: each run's path below the runs' common folder (e.g. vit/seed0),
    keeping the folder above a bare seedK so a bench arm is always named."""
    parts = [d.resolve().parts for d in dirs]
    common = 0
    while parts and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    keep = [max(len(p) - common, 2 if re.fullmatch(r"seed\d+", p[-1]) else 1) for p in parts]
    return ["/".join(p[-k:]) for p, k in zip(parts, keep)]


def load_runs(dirs: list[Path]) -> list[dict]:
    return [load_run(d, n) for d, n in zip(dirs, _names(dirs))]


# ---------------------------------------------------------------- figures

def _time_axis(runs: list[dict]) -> tuple[float, str]:
    """Seconds per unit and its label, chosen from the longest run (s, min or h)."""
    longest = max([r["train_time_s"] for run in runs for r in run["log"] + run["evals"]],
                  default=0.0)
    if longest < 180:
        return 1.0, "s"
    return (60.0, "min") if longest < 3 * 3600 else (3600.0, "h")


def _colors(runs: list[dict]) -> list:
    """One colour per group (the folder above seedK, i.e. the bench arm), so seeds of an arm
    share a colour and arms stand apart."""
    from matplotlib import colormaps
    groups = [re.sub(r"/?seed\d+$", "", r["name"]) or r["name"] for r in runs]
    order = list(dict.fromkeys(groups))
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return [cmap(order.index(g) % cmap.N) for g in groups]


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(fontsize="small" if n <= 8 else "x-small", ncol=1 if n <= 12 else 2,
                  loc="best", frameon=False)


def time_to_accuracy_figure(runs: list[dict], ema: bool = False, title: str = "") -> Figure:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    scale, unit = _time_axis(runs)
    curves = 0
    for run, color in zip(runs, _colors(runs)):
        ev = run["evals"]
        if not ev:
            continue
        t = [e["train_time_s"] / scale for e in ev]
        ax.plot(t, [e["top1"] for e in ev], "-o", color=color, ms=3, label=run["name"])
        curves += 1
        # The trainer evaluates the EMA weights at the end only: usually one point, so marked.
        pts = [(x, e["top1_ema"]) for x, e in zip(t, ev) if e.get("top1_ema") is not None]
        if ema and pts:
            ax.plot(*zip(*pts), "--D", color=color, ms=5, label=f"{run['name']} (EMA)")
            curves += 1
    ax.set_xlabel(f"training time ({unit}; budget clock, evaluation excluded)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Time to accuracy")
    ax.grid(alpha=0.3)
    _legend(ax, curves)
    return fig


def schedule_figure(runs: list[dict], title: str = "") -> Figure:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax_size, ax_lr = fig.subplots(2, 1, sharex=True)
    scale, unit = _time_axis(runs)
    n = 0
    for run, color in zip(runs, _colors(runs)):
        log, stages = run["log"], run["summary"].get("stages")
        if not log and not stages:
            continue
        if stages:  # exact: when each size started and ended, from the summary
            t = [st["start_s"] / scale for st in stages] + [stages[-1]["end_s"] / scale]
            sizes = [st["img_size"] for st in stages] + [stages[-1]["img_size"]]
        else:  # a run still training: its log lines
            t, sizes = [r["train_time_s"] / scale for r in log], [r["img_size"] for r in log]
        ax_size.plot(t, sizes, color=color, drawstyle="steps-post", label=run["name"])
        few = "o" if len(log) < 5 else None  # a short run's few log lines stay visible
        ax_lr.plot([r["train_time_s"] / scale for r in log], [r["lr"] for r in log],
                   color=color, marker=few, ms=3, label=run["name"])
        n += 1
    ax_size.set_ylabel("image size (px)")
    ax_size.set_title(title or "Image size and learning rate over the budget")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel(f"training time ({unit}; budget clock)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_size, ax_lr):
        ax.grid(alpha=0.3)
    _legend(ax_size, n)
    return fig


# ---------------------------------------------------------------- Markdown

def _f(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def markdown(runs: list[dict], title: str = "", images: tuple[str, ...] = ()) -> str:
    rows = ["| run | model | top-1 (%) | EMA top-1 (%) | top-5 (%) | images | epochs | "
            "train time | eval time | sizes (px) | device |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for run in runs:
        s = run["summary"]
        if not s:  # unfinished: show how far it got
            last = run["log"][-1] if run["log"] else {}
            rows.append(f"| {run['name']} | (running or stopped) | – | – | – | "
                        f"{last.get('images', 0):,} | {_f(last.get('epoch'), '.2f')} | "
                        f"{last.get('train_time_s', 0) / 60:.2f} min | – | "
                        f"{last.get('img_size', '–')} | – |")
            continue
        sizes = "→".join(str(st["img_size"]) for st in s.get("stages", [])) or "–"
        device, worlds = s.get("device", "–"), world_sizes(s)
        if worlds != [1]:  # (torchrun: as many processes, each on such a device)
            device = f"{'→'.join(map(str, worlds))} x {device}"
        rows.append(f"| {run['name']} | {s.get('model', '–')} | {_f(s.get('top1'), '.2f')} | "
                    f"{_f(s.get('top1_ema'), '.2f')} | {_f(s.get('top5'), '.2f')} | "
                    f"{s.get('images_seen', 0):,} | {_f(s.get('epochs'), '.2f')} | "
                    f"{s.get('train_time_s', 0) / 60:.2f} min | {s.get('eval_time_s', 0):.0f} s | "
                    f"{sizes} | {device} |")
    pics = [f"![{p}]({p})" for p in images]
    return "\n".join([f"# {title or 'Runs'}", "", *rows, "", *pics]).rstrip() + "\n"


def write_report(dirs: list[Path], out: Path, ema: bool = False, title: str = "") -> list[Path]:
    """Write the two PNGs and report.md into `out`; returns the written paths."""
    runs = load_runs(dirs)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "time_to_accuracy.png", out / "schedule.png", out / "report.md"]
    for fig, path in ((time_to_accuracy_figure(runs, ema, title), paths[0]),
                      (schedule_figure(runs, title), paths[1])):
        fig.savefig(path, dpi=120)
    paths[2].write_text(markdown(runs, title, tuple(p.name for p in paths[:2])),
                       encoding="utf-8")
    return paths


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or folders searched for them (e.g. a bench OUT)")
    p.add_argument("--out", help="where to write (default: the single RUN_DIR given, else ./report)")
    p.add_argument("--ema", action="store_true",
                   help="add each run's EMA top-1 (a diamond: the EMA is evaluated at the end)")
    p.add_argument("--title", default="", help="title of the plots and the Markdown")


def run(args) -> int:
    from .config import ConfigError
    from .out_folder import check_folder
    dirs = discover(args.runs)
    if not dirs:
        raise ConfigError(f"no run directories (with summary.json or log.jsonl) under "
                          f"{', '.join(args.runs)}")
    out = Path(args.out or (args.runs[0] if len(args.runs) == 1 else "report"))
    check_folder(out, "--out")
    for path in write_report(dirs, out, args.ema, args.title):
        print(path)
    return 0
