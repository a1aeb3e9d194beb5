"""budgetvit bench: several arms x several seeds under one budget, one run after another.

An arm (arms.py) is a named change of the preset's config (plain ViT, + locality FFN,
+ curriculum, ..., or one of your own: --arm 'NAME: KEY=VALUE ...'), written as `--set`
overrides so that every run's exact command can be read, copied and rerun. Each run is its
own `budgetvit train` process (a clean process and a clean clock) in OUT/<arm>/seed<k>; a run
directory with summary.json is done and skipped, one with only a checkpoint resumes by itself
(either only if bench.json says it ran the same command). At the end OUT/results.json and
OUT/results.md aggregate every finished run in OUT, and the plots of `budgetvit report` are
drawn.
BENCHMARK.md has the rules.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .arms import ABLATION, Arm, adhoc_arm, all_arms, arm_config, sweep_arms
from .config import (Config, ConfigError, apply_overrides, check_one_budget, parse_budget, sets,
                     validate)
from .folder_lock import folder_lock
from .out_folder import check_folder
from .output import guarded_output
from .summary import read_json, world_sizes, write_json_atomic

COMMAND, HELP = "bench", "run arms x seeds under one budget; results.json + results.md"


# ---------------------------------------------------------------- the named benchmarks

@dataclass(frozen=True)
class Benchmark:
    """One row of BENCHMARK.md as code: what it trains and the limits a run must keep."""
    preset: str
    budget: str
    overrides: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)  # set for every run (e.g. CPU thread count)
    cpu_cores: int | None = None  # cores a run may use (None: not limited)
    gpus: int = 0
    warmup_cap_s: float = 0.0  # untimed compile/shape warm-up allowed per run
    prep_cap_s: float = 0.0  # one-time dataset preprocessing allowed (reported separately)


BENCHMARKS = {
    "imagenet1k-1gpu-24h": Benchmark("imagenet-1gpu-24h", "24h", ("train.device=cuda",),
                                     gpus=1, warmup_cap_s=1800.0, prep_cap_s=4 * 3600.0),
    "fmnist-cpu-5m": Benchmark("fmnist", "5m", ("train.device=cpu",), {"OMP_NUM_THREADS": "2"},
                               cpu_cores=2, warmup_cap_s=60.0),
    "fmnist-cpu-1m": Benchmark("fmnist", "1m", ("train.device=cpu",), {"OMP_NUM_THREADS": "2"},
                               cpu_cores=2, warmup_cap_s=60.0),
}


# ---------------------------------------------------------------- aggregation (pure)

def _read_json(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None  # sample std: none of one
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def _violations(seed: int, s: dict, caps: Benchmark | None) -> list[str]:
    """A named benchmark's limits that this run's summary broke (BENCHMARK.md rules 1, 2)."""
    out = []
    most = max(world_sizes(s))  # (over every resume)
    if caps and most > max(1, caps.gpus):
        out.append(f"seed{seed}: {most} processes; the benchmark allows {max(1, caps.gpus)}")
    if caps and caps.warmup_cap_s and s.get("warmup_time_s", 0) > caps.warmup_cap_s:
        out.append(f"seed{seed}: warm-up {s['warmup_time_s']:.0f}s over the "
                   f"{caps.warmup_cap_s:.0f}s cap")
    # The trainer stops at the first step boundary past the budget: more is a clock fault.
    if caps and s.get("last_step_s") and (s.get("overrun_s") or 0) > 1.5 * s["last_step_s"]:
        out.append(f"seed{seed}: {s['overrun_s']:.2f}s over the budget, its last step took "
                   f"{s['last_step_s']:.2f}s")
    return out


def aggregate(runs: dict[str, dict[int, dict]], caps: Benchmark | None = None) -> dict:
    """{arm: {seed: summary}} -> per arm: n, seeds, stats of top1 and top1_ema, means of
    images_seen / epochs / train_time_s / eval_time_s, and runs that broke a benchmark cap."""
    out = {}
    for arm, by_seed in runs.items():
        seeds = sorted(by_seed)
        s = [by_seed[k] for k in seeds]
        ema = [x["top1_ema"] for x in s if x.get("top1_ema") is not None]
        mean = lambda key: statistics.fmean(x[key] for x in s)  # noqa: E731
        out[arm] = {
            "n": len(s), "seeds": seeds,
            "top1": _stats([x["top1"] for x in s]),
            "top1_ema": _stats(ema) if len(ema) == len(s) else None,
            "images_seen": mean("images_seen"), "epochs": mean("epochs"),
            "train_time_s": mean("train_time_s"), "eval_time_s": mean("eval_time_s"),
            "model": s[0].get("model"), "budget": sorted({str(x.get("budget")) for x in s}),
            "code_version": sorted({str(x.get("code_version")) for x in s}),
            "device": sorted({str(x.get("device")) for x in s}),
            "eval_split": sorted({x.get("eval_split", "the evaluation split") for x in s}),
            "violations": [v for k, x in zip(seeds, s) for v in _violations(k, x, caps)],
        }
    return out


def collect(out_dir: Path) -> dict[str, dict[int, dict]]:
    """Every finished run OUT/<arm>/seed<k>/summary.json, arms in the order bench.json lists
    them (then any others by name)."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(out_dir).glob("*/seed*/summary.json")):
        if re.fullmatch(r"seed\d+", path.parent.name):
            found.setdefault(path.parent.parent.name, {})[int(path.parent.name[4:])] = \
                read_json(path)
    order = _read_json(Path(out_dir) / "bench.json").get("arms", [])
    return {a: found[a] for a in [*[a for a in order if a in found], *sorted(set(found) - set(order))]}


def _pm(st: dict | None) -> str:
    """mean ± sample std; the mean alone for one run (no std); – for none."""
    if st is None:
        return "–"
    return f"{st['mean']:.2f}" + (f" ± {st['std']:.2f}" if st["std"] is not None else "")


def markdown(results: dict) -> str:
    splits = sorted({e for r in results["arms"].values()
                     for e in r.get("eval_split", ["the evaluation split"])}) \
        or ["the evaluation split"]  # no run finished
    head = (f"Benchmark `{results.get('benchmark')}`: preset `{results.get('preset')}`, budget "
            f"{results.get('budget')}, top-1 in % on {' / '.join(splits)} at the final size, "
            f"mean ± sample std over seeds.\n\n")
    rows = ["| arm | n | top-1 | top-1 min–max | EMA top-1 | images | epochs | train time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, r in results["arms"].items():
        t = r["top1"]
        rows.append(f"| {arm} | {r['n']} | {_pm(t)} | {t['min']:.2f}–{t['max']:.2f} | "
                    f"{_pm(r['top1_ema'])} | {r['images_seen']:,.0f} | {r['epochs']:.2f} | "
                    f"{r['train_time_s'] / 60:.2f} min |")
    about = [f"- `{a}`: {r['about']}" for a, r in results["arms"].items() if r.get("about")]
    notes = [f"- {a}: {v}" for a, r in results["arms"].items() for v in r["violations"]]
    label = {"cuda": "torch built for CUDA"}  # (not a GPU: `gpus` lists those)
    described = lambda env: "; ".join(  # noqa: E731
        f"{label.get(k, k)} {(', '.join(v) if isinstance(v, list) else v) or 'none'}"
        for k, v in env.items())
    machines = results.get("environments") or [results.get("environment") or {}]
    if len(machines) > 1:  # resumed elsewhere: a run may have been timed on any of them
        where = ["The runs in this folder ran in several environments:",
                 *(f"- {described(env)}" for env in machines)]
    else:
        where = [f"Environment: {described(machines[0])}" if machines[0] else ""]
    tail = ["", *about, "", *where]
    if results.get("failed"):
        tail += ["", "Failed runs (no summary.json; see each one's train.log): " +
                 ", ".join(results["failed"])]
    if notes:
        tail += ["", "Rule violations:", *notes]
    return head + "\n".join(rows + tail).rstrip() + "\n"


def write_results(out_dir: Path, meta: dict, caps: Benchmark | None = None,
                  about: dict | None = None) -> dict:
    arms = aggregate(collect(out_dir), caps)
    for name, r in arms.items():
        r["about"] = (about or {}).get(name, "")
    results = {**meta, "arms": arms}
    write_json_atomic(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(markdown(results), encoding="utf-8")
    return results


# ---------------------------------------------------------------- the harness

def environment() -> dict:
    """What BENCHMARK.md asks every result to report. GPU facts come from nvidia-smi, so this
    process never opens a CUDA context that would hold memory during the runs."""
    import platform
    import torch
    import torchvision
    from .runtime import cpu_model
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
           "platform": platform.platform(), "cpu": cpu_model(),
           "cpu_cores_visible": len(os.sched_getaffinity(0))}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        # (its complaints, "No devices were found", are no GPU)
        env["gpus"] = ([line.strip() for line in q.stdout.splitlines() if line.strip()]
                       if q.returncode == 0 else [])
    except (OSError, subprocess.SubprocessError):
        env["gpus"] = []
    return env


def _check_hardware(name: str, bench: Benchmark | None, env: dict) -> None:
    """Warn (not fail: the numbers are still worth keeping, marked) when the machine shows more
    than the benchmark allows."""
    if bench and bench.cpu_cores and env["cpu_cores_visible"] > bench.cpu_cores:
        print(f"warning: {env['cpu_cores_visible']} CPU cores visible; {name} allows "
              f"{bench.cpu_cores}: run under `taskset -c 0-{bench.cpu_cores - 1}`", flush=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = len(visible.split(",")) if visible else len(env["gpus"])
    if bench and bench.gpus and gpus > bench.gpus:
        print(f"warning: {gpus} GPUs visible; {name} allows {bench.gpus}: set "
              f"CUDA_VISIBLE_DEVICES", flush=True)


def _seeds(text: str) -> list[int]:
    """'3' -> seeds 0, 1, 2; '0,5,7' -> exactly those."""
    try:
        seeds = ([int(s) for s in text.split(",") if s.strip()] if "," in text
                 else list(range(int(text))))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds: expected a count like 3 or a list like 0,5,7, got {text!r}")
    return list(dict.fromkeys(seeds))


def plan(args) -> tuple[str, Benchmark | None, Config, list[Arm], list[int], list[str]]:
    """Resolve the benchmark, base config, arms and seeds; validate every arm before any run."""
    from .presets import get_preset
    name = args.benchmark or ("custom" if args.preset or args.budget else "fmnist-cpu-5m")
    if name != "custom" and name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    if args.benchmark and (args.preset or args.budget):
        raise ConfigError("--benchmark fixes the preset and budget; drop --preset/--budget, or "
                          "drop --benchmark for a custom bench")
    check_one_budget(args.budget, args.set)
    bench = BENCHMARKS.get(name)
    base = get_preset(bench.preset if bench else args.preset or "fmnist")
    base.train.budget = bench.budget if bench else args.budget or base.train.budget
    common = [*(bench.overrides if bench else ()), *args.set]
    apply_overrides(base, common)
    validate(base, paths=not args.list)  # --list shows an imagenet bench without its data
    known = all_arms(base)
    adhoc: list[Arm] = []
    for spec in args.arm or []:
        adhoc.append(adhoc_arm(spec, {*known, *(a.name for a in adhoc)}))
    keys = {s.split("=")[0].strip() for s in [*args.set,
                                               *(x for a in adhoc for x in a.overrides(base))]}
    if "train.seed" in keys:
        raise ConfigError("train.seed is set by the bench for each run; use --seeds")
    pinned = {"train.budget", *(o.split("=")[0] for o in bench.overrides)} if bench else set()
    if keys & pinned:  # its results would carry the benchmark's name for something else
        raise ConfigError(f"benchmark {name} fixes {', '.join(sorted(keys & pinned))}; drop "
                          f"them from --set/--arm, or make a custom bench with --preset and "
                          f"--budget")
    names = list(dict.fromkeys(a.strip() for a in (args.arms or "").split(",") if a.strip()))
    for a in names:
        if a not in known:
            raise ConfigError(f"unknown arm {a!r}; choose from: {', '.join(known)}")
    chosen = [known[a] for a in names] + adhoc
    if not chosen:
        chosen = sweep_arms(base) if args.sweep else list(ABLATION)
    for arm in chosen:
        arm_config(base, arm, paths=not args.list)
    if bench and args.nproc_per_node > max(1, bench.gpus):
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node}: benchmark {name} allows "
                          f"{max(1, bench.gpus)} process(es) per run; make a custom bench with "
                          f"--preset and --budget")
    return name, bench, base, chosen, _seeds(args.seeds), common


def train_argv(base: Config, arm: Arm, seed: int, run_dir: Path, common: list[str]) -> list[str]:
    """The run's `budgetvit train` arguments: evaluation every fifth of a time budget (so the
    time-to-accuracy curve exists; not charged), then --set values, the arm's own keys and the
    seed, later ones winning."""
    budget, unit = parse_budget(arm_config(base, arm).train.budget)  # (an arm's own, if set)
    pre = [f"train.eval_every_s={budget / 5:g}"] if unit == "seconds" else []
    overrides = [*pre, *common, *arm.overrides(base), f"train.seed={seed}"]
    # (`budgetvit train` refuses a --budget besides a --set budget: an arm's own budget, say)
    flag = [] if sets(overrides, "train.budget") else ["--budget", base.train.budget]
    return ["train", "--preset", base.preset, *flag, "--out", str(run_dir), "--set", *overrides]


def _shell(argv: list[str], nproc: int = 1) -> str:
    """A budgetvit command line as one would type it (under torchrun for nproc > 1)."""
    head = f"torchrun --standalone --nproc_per_node={nproc} -m budgetvit" if nproc > 1 else \
        "budgetvit"
    return f"{head} {' '.join(map(shlex.quote, argv))}"


def _same_arm(recorded: str, argv: list[str]) -> bool:
    """Whether a recorded `budgetvit train` command line is argv but for its seed, wherever its
    --out points (the same folder may be named relative or absolute)."""
    def drop_out_and_seed(a: list[str]) -> list[str]:
        i = a.index("--out")
        # (the bench's own evaluation interval: an earlier version took it from the base budget)
        return [x for x in a[:i] + a[i + 2:]
                if not x.startswith(("train.seed=", "train.eval_every_s="))]
    words = shlex.split(recorded)
    return drop_out_and_seed(words[words.index("train"):]) == drop_out_and_seed(argv)


def bench_command(args, out: Path) -> str:
    """This bench as a command line, rebuilt from the parsed arguments (the same whether it
    came from the shell, `python -m budgetvit` or a test)."""
    argv = ["bench", *[x for f in ("benchmark", "preset", "budget", "arms", "seeds")
                       if getattr(args, f) for x in (f"--{f}", str(getattr(args, f)))]]
    argv += [x for spec in args.arm or [] for x in ("--arm", spec)]
    argv += ["--out", str(out), *(["--sweep"] if args.sweep else [])]
    if args.nproc_per_node > 1:
        argv += ["--nproc-per-node", str(args.nproc_per_node)]
    return _shell(argv + (["--set", *args.set] if args.set else []))


def launcher(nproc: int) -> list[str]:
    """How each run starts: one process, or nproc processes under torchrun (DDP)."""
    if nproc <= 1:
        return [sys.executable, "-m", "budgetvit"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "budgetvit"]


def _train(argv: list[str], run_dir: Path, env: dict, nproc: int) -> tuple[int, bool]:
    """One `budgetvit train` process, its output appended to run_dir/train.log. Ctrl-C reaches
    the child too (same process group); SIGTERM is passed on. Either way the child writes its
    checkpoint before it exits, and a rerun of the bench resumes it. Returns (exit code,
    whether SIGTERM arrived)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.Popen([*launcher(nproc), *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        stopped = []
        old = signal.signal(signal.SIGTERM, lambda *_: (stopped.append(1),
                                                        proc.send_signal(signal.SIGTERM)))
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            rc = proc.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, old)
    return rc, bool(stopped)


def _run_one(head: str, argv: list[str], run_dir: Path, env: dict, nproc: int) -> str:
    """Run (or skip, or resume) one arm/seed; print its one-line status. Returns 'ok',
    'skipped', 'failed' or 'stopped'."""
    if (run_dir / "summary.json").exists():
        print(f"{head} done, skipping", flush=True)
        return "skipped"
    verb = "resuming" if (run_dir / "checkpoints").exists() else "running"
    print(f"{head} {verb} (log {run_dir / 'train.log'})", flush=True)
    t0 = time.perf_counter()
    try:
        rc, stopped = _train(argv, run_dir, env, nproc)
    except KeyboardInterrupt:
        rc, stopped = 130, True
    s = _read_json(run_dir / "summary.json")
    # Exit 0 without a summary: the trainer was stopped by a signal sent to it alone (a
    # scheduler, a kill) and has checkpointed, as when the bench itself was stopped.
    if stopped or (rc == 0 and not s):  # start no other run
        print(f"{head} interrupted; rerun the same command to resume", flush=True)
        return "stopped"
    if rc != 0 or not s:
        tail = (run_dir / "train.log").read_text(errors="replace").splitlines()[-6:]
        print(f"{head} failed (exit {rc}); end of its log:\n    " + "\n    ".join(tail),
              flush=True)
        return "failed"
    ema = f", EMA {s['top1_ema']:.2f}%" if s.get("top1_ema") is not None else ""
    print(f"{head} top-1 {s['top1']:.2f}%{ema}, {s['epochs']:.2f} epochs, "
          f"{time.perf_counter() - t0:.0f}s wall", flush=True)
    return "ok"


def run(args) -> int:
    name, bench, base, arms, seeds, common = plan(args)
    if args.list:  # the built-in arms, then those of --arm
        known = all_arms(base)
        for a in [*known.values(), *(a for a in arms if a.name not in known)]:
            sets = " ".join(a.overrides(base))
            line = f"--set {sets}" if sets else "(no --set)"
            print(f"{a.name:30s} {a.about}" + (f"\n{'':30s} {line}" if line != a.about else ""))
        return 0
    out = Path(args.out or f"runs/bench-{name}{'-sweep' if args.sweep else ''}")
    # Seed by seed, every arm in each: if the machine's speed drifts over the hours, the arms
    # of one seed still ran under the same conditions, and a bench stopped early has whole seeds.
    runs = [(a, k, out / a.name / f"seed{k}") for k in seeds for a in arms]
    argvs = [train_argv(base, a, k, d, common) for a, k, d in runs]
    if args.dry_run:
        for argv in argvs:
            print(_shell(argv, args.nproc_per_node))
        return 0
    check_folder(out, "--out")
    with folder_lock(out), guarded_output(lambda: None):
        # (guarded: output nobody reads any more, a closed pipe, ends no bench: each run
        # writes its own train.log, and the bench its results files)
        return _bench(args, out, name, bench, base, arms, runs, argvs, common)


def _changes(old: dict, new: dict) -> str:
    """'budget 12steps -> 14steps': the fields of two bench records that differ."""
    def shown(v):
        return (" ".join(map(str, v)) or "none") if isinstance(v, list) else str(v)
    return ", ".join(f"{k} {shown(old.get(k))} -> {shown(new[k])}" for k in new
                     if old.get(k) != new[k])


def _bench(args, out: Path, name: str, bench: Benchmark | None, base: Config, arms: list[Arm],
           runs: list, argvs: list[list[str]], common: list[str]) -> int:
    # A bench folder holds one comparison: same benchmark, preset, budget and --set values.
    meta = {"benchmark": name, "preset": base.preset, "budget": base.train.budget, "set": common,
            "nproc_per_node": args.nproc_per_node}
    old = _read_json(out / "bench.json")
    changes = _changes(old, meta) if old else ""
    if changes:
        raise ConfigError(f"{out} holds a bench with other settings ({changes}); use another "
                          f"--out, or those settings")
    # An arm name may be reused only for the same overrides: a run of another command resumed
    # or skipped as done, or new seeds pooled with its old ones, would mix two configs in one arm.
    held = lambda d: (d / "summary.json").exists() or (d / "checkpoints").exists()  # noqa: E731
    for (arm, seed, run_dir), argv in zip(runs, argvs):
        for key, was in old.get("runs", {}).items():
            ran = out / key
            if key.rpartition("/seed")[0] == arm.name and held(ran) and not _same_arm(was, argv):
                raise ConfigError(f"{ran} was run as `{was}`; this bench would run "
                                  f"`{_shell(argv, args.nproc_per_node)}`: use another --out "
                                  f"or arm name")
        # A run the bench has no record of (a `budgetvit train` of one's own): its command is
        # unknown, so it would be pooled with this arm's runs unchecked.
        if held(run_dir) and f"{arm.name}/seed{seed}" not in old.get("runs", {}):
            raise ConfigError(f"{run_dir} holds a run this bench did not start (bench.json has "
                              f"no record of it); move it away, or use another --out")
    env_info = environment()
    _check_hardware(name, bench, env_info)
    # Every environment a run of the folder ran in (a bench resumed elsewhere has runs in each)
    machines = old.get("environments") or ([old["environment"]] if "environment" in old else [])
    record = {**meta, "arms": list(dict.fromkeys([*old.get("arms", []), *(a.name for a in arms)])),
              "commands": [*old.get("commands", []), bench_command(args, out)],
              "runs": dict(old.get("runs", {})), "environment": env_info,
              "environments": machines,
              # what each arm is, kept for an --arm of an earlier call (this one may lack it)
              "about": {**old.get("about", {}), **{a.name: a.about for a in arms}}}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(bench.env if bench else {})}
    failed = []
    for i, ((arm, seed, run_dir), argv) in enumerate(zip(runs, argvs), 1):
        record["runs"][f"{arm.name}/seed{seed}"] = _shell(argv, args.nproc_per_node)
        if not (run_dir / "summary.json").exists() and env_info not in machines:  # runs here
            machines.append(env_info)
        write_json_atomic(out / "bench.json", record)
        status = _run_one(f"[{i}/{len(runs)}] {arm.name} seed {seed}:", argv, run_dir, env,
                          args.nproc_per_node)
        if status == "stopped":
            return 130
        if status == "failed":
            failed.append(f"{arm.name}/seed{seed}")
    about = {**{a.name: a.about for a in all_arms(base).values()}, **record["about"]}
    rules = dataclasses.asdict(bench) if bench else None
    results = write_results(out, {**meta, "rules": rules, "environment": env_info,
                                  "environments": machines, "failed": failed}, bench, about)
    from .report import is_run, write_report
    seed_no = lambda d: int(d.name[4:]) if d.name[4:].isdigit() else -1  # noqa: E731
    dirs = [d for a in record["arms"] for d in sorted((out / a).glob("seed*"), key=seed_no)
            if is_run(d)]
    plots = ""
    if dirs:  # none where every run failed before its first log line
        write_report(dirs, out, title=f"{name}: {base.preset}, budget {base.train.budget}")
        plots = f"; plots: {out / 'time_to_accuracy.png'}, {out / 'schedule.png'}"
    print(f"\n{markdown(results)}\nresults: {out / 'results.json'}, {out / 'results.md'}"
          f"{plots}", flush=True)
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_arguments(p) -> None:
    from .cli import positive_int
    p.add_argument("--benchmark", help=f"named benchmark: {', '.join(BENCHMARKS)} (default "
                   "fmnist-cpu-5m unless --preset/--budget make a custom bench)")
    p.add_argument("--preset", help="custom bench: recipe name")
    p.add_argument("--budget", help="custom bench: budget per run, e.g. 90s, 5m, 500steps")
    p.add_argument("--arms", help="comma-separated arm names (see --list); default: the "
                   "ablation, or the curriculum sweep with --sweep (none where --arm is given)")
    p.add_argument("--arm", action="append", metavar="'NAME: KEY=VALUE ...'",
                   help="an arm of your own: the base config plus these overrides (repeatable; "
                   "runs after the --arms ones, in place of the default arms)")
    p.add_argument("--sweep", action="store_true",
                   help="the curriculum sweep's arms (S0, M, N, shares) unless --arms/--arm "
                   "name the arms to run; either way the default --out is runs/bench-NAME-sweep")
    p.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a list 0,5,7")
    p.add_argument("--out", help="bench directory (default runs/bench-NAME[-sweep])")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (an arm's own keys win)")
    p.add_argument("--nproc-per-node", type=positive_int, default=1, metavar="N",
                   help="processes per run; N > 1 launches each run with torchrun (DDP)")
    p.add_argument("--dry-run", action="store_true", help="print the train commands, run nothing")
    p.add_argument("--list", action="store_true", help="list the arms and their overrides")
