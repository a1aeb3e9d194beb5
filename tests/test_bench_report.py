"""budgetvit bench and budgetvit report: arms, aggregation against hand-computed values, plots
with the expected number of curves, and a real tiny bench whose rerun skips finished runs."""
import json
import math
import shlex
from argparse import Namespace

import pytest

from budgetvit import arms, bench, report
from budgetvit.cli import main
from budgetvit.config import ConfigError
from budgetvit.presets import get_preset

from .conftest import needs_fmnist

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(d, top1, top1_ema=None, images=1000, epochs=0.5, train_s=60.0, evals=3,
             sizes=(16, 28), finished=True):
    """A run directory written by hand: summary.json, log.jsonl and eval.jsonl."""
    d.mkdir(parents=True)
    log = [{"step": 10 * i, "train_time_s": train_s * i / 6, "img_size": sizes[i * len(sizes) // 7],
            "lr": 1e-3 * (1 - i / 6), "loss": 2.0 - 0.1 * i, "img_per_s": 100.0,
            "images": 640 * i, "epoch": 0.01 * i} for i in range(1, 7)]
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    ev = [{"step": 10 * i, "train_time_s": train_s * i / evals, "images": 100 * i,
           "img_size": sizes[-1], "top1": top1 * i / evals, "top5": 90.0, "loss": 1.0,
           "eval_images": 10000, **({"top1_ema": top1_ema * i / evals} if top1_ema else {})}
          for i in range(1, evals + 1)]
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ev))
    if finished:
        s = {"top1": top1, "top5": 90.0, "budget": "1m", "budget_s": 60.0,
             "train_time_s": train_s, "eval_time_s": 5.0, "warmup_time_s": 2.0,
             "images_seen": images, "epochs": epochs, "final_img_size": sizes[-1],
             "stages": [{"img_size": s, "start_s": 0, "end_s": 1, "images": 1} for s in sizes],
             "model": "vit_micro4", "device": "cpu", "code_version": "abc", "evals": ev}
        if top1_ema is not None:
            s["top1_ema"] = top1_ema
        (d / "summary.json").write_text(json.dumps(s))
    return d


# ---------------------------------------------------------------- arms and planning

@pytest.mark.parametrize("preset", ["fmnist", "imagenet-1gpu-24h", "imagenet-1gpu-24h-deit"])
def test_arms_are_valid_and_mean_what_they_say(preset, tmp_path):
    base = get_preset(preset)
    if base.data.dataset == "imagefolder":  # validation wants a real root with train/
        (tmp_path / "train").mkdir()
        base.data.path = str(tmp_path)
    by_name = arms.all_arms(base)
    cfgs = {name: arms.arm_config(base, arm) for name, arm in by_name.items()}
    shape = base.model.name.removesuffix("_local")
    assert cfgs["vit"].model.name == shape and cfgs["vit"].curriculum.mode == "off"
    assert cfgs["vit+local"].model.name == shape + "_local"
    assert cfgs["vit+curriculum"].curriculum.mode != "off"
    both = cfgs["vit+local+curriculum"]
    assert both.model.name == shape + "_local" and both.curriculum.mode != "off"
    assert cfgs["vit+local-gelu+curriculum"].model.act == "gelu"
    sweep = arms.sweep_arms(base)
    assert len(sweep) >= 4 and len({a.name for a in sweep}) == len(sweep)
    assert len({tuple(a.overrides(base)) for a in sweep}) == len(sweep)


def test_fmnist_sweep_settings():
    names = [a.name for a in arms.sweep_arms(get_preset("fmnist"))]
    assert names == ["preset", "paper-S16-M4-N1", "paper-S16-M4-N0.5", "paper-S16-M4-N2",
                     "paper-S20-M4-N1", "paper-S16-M8-N1", "stages-equal-16-20-24-28",
                     "stages-rising-16-20-24-28", "stages-half-16-28"]
    equal = arms.all_arms(get_preset("fmnist"))["stages-equal-16-20-24-28"]
    assert equal.overrides(get_preset("fmnist"))[-1] == "curriculum.stages=16:0.25,20:0.25,24:0.25,28:0.25"
    rising = arms.all_arms(get_preset("fmnist"))["stages-rising-16-20-24-28"]
    assert rising.overrides(get_preset("fmnist"))[-1] == "curriculum.stages=16:0.1,20:0.2,24:0.3,28:0.4"


def bench_args(**kw):
    args = dict(benchmark=None, preset=None, budget=None, arms=None, arm=None, sweep=False,
                seeds="3", out=None, set=[], dry_run=False, list=False, nproc_per_node=1)
    return Namespace(**{**args, **kw})


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "--benchmark", "fmnist-cpu-5m", "--seeds", "2", "--out", str(out),
                 "--dry-run", "--set", "optim.lr=1e-3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and not out.exists()
    first = lines[0]
    assert first.startswith("budgetvit train --preset fmnist --budget 5m --out")
    assert "train.eval_every_s=60" in first and "train.device=cpu" in first
    assert "optim.lr=1e-3" in first and first.endswith("train.seed=0")
    # Seed by seed: the four arms of seed 0, then those of seed 1.
    assert [ln.split(f"{out}/")[1].split()[0] for ln in lines] == \
        [f"{a}/seed{k}" for k in (0, 1) for a in ("vit", "vit+local", "vit+curriculum",
                                                  "vit+local+curriculum")]


@pytest.mark.parametrize("kw, message", [
    (dict(benchmark="nope"), "unknown benchmark"),
    (dict(benchmark="fmnist-cpu-1m", budget="5m"), "--benchmark fixes"),
    (dict(arms="vit,nope"), "unknown arm 'nope'"),
    (dict(set=["train.seed=3"]), "use --seeds"),
    (dict(seeds="two"), "--seeds"),
    (dict(arm=["lr 3e-3"]), "expected 'NAME: KEY=VALUE"),
    (dict(arm=["bad name: optim.lr=1e-3"]), "expected 'NAME: KEY=VALUE"),
    (dict(arm=["vit: optim.lr=1e-3"]), "--arm vit: that name is taken"),
    (dict(arm=["a: optim.lr=1e-3", "a: optim.lr=2e-3"]), "--arm a: that name is taken"),
    (dict(arm=["a: optim.lr"]), "arm a: --set expects key=value"),
    (dict(arm=["a: optim.nope=1"]), "arm a: unknown config key"),
    (dict(arm=["a: optim.lr=-1"]), "arm a: optim.lr=-1"),
    (dict(arm=["a: train.seed=4"]), "use --seeds"),
])
def test_plan_errors_are_one_line(kw, message):
    with pytest.raises(ConfigError, match=message):
        bench.plan(bench_args(**kw))


def test_adhoc_arms_run_after_named_ones_with_exactly_their_overrides(tmp_path, capsys):
    specs = ["lr-3e-3: optim.lr=3e-3", "stages: curriculum.mode=stages "
             "'curriculum.stages=16:0.5,28:0.5'", "base:"]
    args = bench_args(benchmark="fmnist-cpu-5m", arms="vit", arm=specs, seeds="1")
    _, _, base, chosen, _, common = bench.plan(args)
    assert [a.name for a in chosen] == ["vit", "lr-3e-3", "stages", "base"]
    cfgs = [arms.arm_config(base, a) for a in chosen[1:]]
    assert cfgs[0].optim.lr == 3e-3 and cfgs[0].curriculum == base.curriculum
    assert cfgs[1].curriculum.stages == "16:0.5,28:0.5" and cfgs[1].optim.lr == base.optim.lr
    assert cfgs[2] == base and chosen[3].about == "the base config"
    # The bench's own command line, parsed again, gives the same arms.
    command = bench.bench_command(args, tmp_path / "b")
    assert main(shlex.split(command)[1:] + ["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("--out ")[1].split()[0].split("/")[-2] for ln in lines] == \
        ["vit", "lr-3e-3", "stages", "base"]
    assert lines[1].endswith("optim.lr=3e-3 train.seed=0")
    assert lines[3].endswith("train.device=cpu train.seed=0")
    # --list names them after the built-in arms, each with its overrides once.
    assert main(shlex.split(command)[1:] + ["--list"]) == 0
    assert capsys.readouterr().out.splitlines()[-4:] == [
        f"{'lr-3e-3':30s} --set optim.lr=3e-3",
        f"{'stages':30s} --set curriculum.mode=stages curriculum.stages=16:0.5,28:0.5",
        f"{'base':30s} the base config", f"{'':30s} (no --set)"]


def test_an_arm_with_its_own_budget_trains_with_it(tmp_path, capsys):
    """`budgetvit train` refuses --budget besides --set train.budget, so the run of an arm
    with a budget of its own is given that alone; the other arms get --budget."""
    args = bench_args(preset="fmnist", budget="6steps", seeds="1", out=str(tmp_path),
                      arm=["long: train.budget=9steps", "base:"])
    _, _, base, chosen, _, common = bench.plan(args)
    long, plain = (bench.train_argv(base, arm, 0, tmp_path / arm.name, common) for arm in chosen)
    assert "--budget" not in long and plain[plain.index("--budget") + 1] == "6steps"
    for argv, budget in ((long, "9steps"), (plain, "6steps")):
        capsys.readouterr()
        assert main([*argv, "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["train"]["budget"] == budget


@pytest.mark.parametrize("finished", [True, False])
def test_a_run_of_another_command_is_neither_skipped_nor_resumed(tmp_path, finished):
    out = tmp_path / "b"
    args = bench_args(preset="fmnist", budget="6steps", arm=["a: optim.lr=1e-3"], seeds="1",
                      out=str(out))
    _, _, base, (arm,), _, common = bench.plan(args)
    argv = bench.train_argv(base, arm, 0, out / "a" / "seed0", common)
    run_dir = fake_run(out / "a" / "seed0", 50.0, finished=finished)
    if not finished:  # interrupted: a checkpoint, no summary
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "step_00000003.pt").write_bytes(b"")
    meta = {"benchmark": "custom", "preset": "fmnist", "budget": "6steps", "set": [],
            "nproc_per_node": 1}
    record = {**meta, "runs": {"a/seed0": bench._shell(argv).replace(str(out), "elsewhere")}}
    (out / "bench.json").write_text(json.dumps(record))
    # The same command with the folder named another way is the same run...
    assert bench._same_arm(record["runs"]["a/seed0"], argv)
    # ...but another arm under that name is not: the bench refuses before running anything.
    args.arm = ["a: optim.lr=2e-3"]
    with pytest.raises(ConfigError, match=r"b/a/seed0 was run as .*optim.lr=1e-3.*use another"):
        bench.run(args)
    # ...nor on new seeds, which would be pooled with seed 0 in one arm's mean.
    args.seeds = "4,5"
    with pytest.raises(ConfigError, match=r"b/a/seed0 was run as .*optim.lr=1e-3.*use another"):
        bench.run(args)


def test_a_bench_whose_runs_all_fail_ends_with_their_names(tmp_path, monkeypatch, capsys):
    """No run left a log (each failed at start): the results and the error, and no report
    (whose run labels, made from no runs, once looped forever)."""
    monkeypatch.setattr(bench, "_run_one", lambda *a: "failed")
    args = bench_args(preset="fmnist", budget="2steps", arms="vit", seeds="2",
                      out=str(tmp_path / "b"))
    assert bench.run(args) == 1
    said = capsys.readouterr()
    assert "error: 2 run(s) failed: vit/seed0, vit/seed1" in said.err
    assert "plots:" not in said.out and not (tmp_path / "b" / "schedule.png").exists()


def test_a_run_stopped_by_a_signal_only_it_saw_stops_the_bench(tmp_path, monkeypatch, capsys):
    """The trainer checkpoints and exits 0 without summary.json when a signal reaches it alone;
    the bench must report it as interrupted and start no other run, as when it is stopped."""
    started = []

    def stopped_child(argv, run_dir, env, nproc):
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoints").mkdir()
        (run_dir / "train.log").write_text("stopped by SIGTERM at step 3; checkpoint written\n")
        started.append(run_dir.name)
        return 0, False  # the bench itself saw no signal
    monkeypatch.setattr(bench, "_train", stopped_child)
    monkeypatch.setattr(bench, "environment", lambda: {"cpu_cores_visible": 1, "gpus": []})
    out = tmp_path / "b"
    args = bench_args(preset="fmnist", budget="6steps", arm=["a: optim.lr=1e-3"], seeds="2",
                      out=str(out))
    assert bench.run(args) == 130  # the bench's own exit code when it is interrupted
    printed = capsys.readouterr().out
    assert "[1/2] a seed 0: interrupted; rerun the same command to resume" in printed
    assert "failed" not in printed and started == ["seed0"]
    assert not (out / "results.md").exists()


def test_an_own_arm_keeps_its_description_when_a_later_call_adds_others(tmp_path, monkeypatch):
    """results.md describes every arm of the folder: an --arm of an earlier call too."""
    def finished_child(head, argv, run_dir, env, nproc):
        fake_run(run_dir, 50.0)
        return "ok"
    monkeypatch.setattr(bench, "_run_one", finished_child)
    monkeypatch.setattr(bench, "environment", lambda: {"cpu_cores_visible": 1, "gpus": []})
    out = tmp_path / "b"
    common = dict(preset="fmnist", budget="6steps", seeds="1", out=str(out))
    assert bench.run(bench_args(arm=["mine: optim.lr=1e-3"], **common)) == 0
    assert bench.run(bench_args(arms="vit", **common)) == 0
    md = (out / "results.md").read_text()
    assert "- `mine`: --set optim.lr=1e-3" in md and "- `vit`: " in md


# ---------------------------------------------------------------- aggregation

def test_results_aggregate_hand_computed_values(tmp_path):
    out = tmp_path / "bench"
    for k, (t, e, img, ep, ts) in enumerate([(80.0, 81.0, 1000, 1.0, 60.0),
                                             (82.0, 83.0, 2000, 2.0, 61.0),
                                             (84.0, 88.0, 3000, 3.0, 62.0)]):
        fake_run(out / "vit" / f"seed{k}", t, e, images=img, epochs=ep, train_s=ts)
    fake_run(out / "vit+local" / "seed0", 70.5, None, images=500, epochs=0.25, train_s=59.0)
    fake_run(out / "vit+local" / "seed1", 0.0, finished=False)  # unfinished: not counted
    (out / "notes").mkdir()
    results = bench.write_results(out, {"benchmark": "custom", "preset": "fmnist",
                                        "budget": "1m"})
    assert json.loads((out / "results.json").read_text()) == results
    assert list(results["arms"]) == ["vit", "vit+local"]
    vit = results["arms"]["vit"]
    assert vit["n"] == 3 and vit["seeds"] == [0, 1, 2]
    assert vit["top1"] == pytest.approx({"mean": 82.0, "std": 2.0, "min": 80.0, "max": 84.0})
    # EMA 81, 83, 88: mean 84, sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13
    assert vit["top1_ema"] == pytest.approx({"mean": 84.0, "std": math.sqrt(13), "min": 81.0,
                                             "max": 88.0})
    assert (vit["images_seen"], vit["epochs"], vit["train_time_s"]) == pytest.approx((2000, 2, 61))
    local = results["arms"]["vit+local"]
    # One run has no sample standard deviation: none, not 0
    assert local["n"] == 1 and local["top1"] == {"mean": 70.5, "std": None, "min": 70.5,
                                                 "max": 70.5}
    assert local["top1_ema"] is None
    md = (out / "results.md").read_text()
    assert "| vit | 3 | 82.00 ± 2.00 | 80.00–84.00 | 84.00 ± 3.61 | 2,000 | 2.00 | 1.02 min |" in md
    assert "| vit+local | 1 | 70.50 | 70.50–70.50 | – | 500 | 0.25 | 0.98 min |" in md


def test_results_without_a_finished_run_name_a_split(tmp_path):
    fake_run(tmp_path / "vit" / "seed0", 0.0, finished=False)
    bench.write_results(tmp_path, {"benchmark": "custom", "preset": "fmnist", "budget": "1m"})
    assert "top-1 in % on the evaluation split at the final size" in \
        (tmp_path / "results.md").read_text()


def test_results_say_what_the_environment_lacks(tmp_path):
    """No GPU reads "gpus none", and the CUDA version PyTorch was built for is not taken for
    a GPU's."""
    fake_run(tmp_path / "vit" / "seed0", 80.0)
    bench.write_results(tmp_path, {"benchmark": "custom", "preset": "fmnist", "budget": "1m",
                                   "environment": {"torch": "2.14.1", "cuda": "13.0",
                                                   "gpus": []}})
    assert ("Environment: torch 2.14.1; torch built for CUDA 13.0; gpus none" in
            (tmp_path / "results.md").read_text())


def test_runs_over_the_benchmark_limits_are_reported(tmp_path):
    fake_run(tmp_path / "vit" / "seed0", 50.0)
    caps = bench.BENCHMARKS["fmnist-cpu-5m"]
    summary = json.loads((tmp_path / "vit/seed0/summary.json").read_text())
    summary.update(warmup_time_s=75.0, overrun_s=0.9, last_step_s=0.1)
    arms = bench.aggregate({"vit": {0: summary}}, caps)
    assert arms["vit"]["violations"] == ["seed0: warm-up 75s over the 60s cap",
                                         "seed0: 0.90s over the budget, its last step took 0.10s"]
    summary.update(warmup_time_s=59.0, overrun_s=0.05)
    assert bench.aggregate({"vit": {0: summary}}, caps)["vit"]["violations"] == []
    assert bench.aggregate({"vit": {0: summary}})["vit"]["violations"] == []


# ---------------------------------------------------------------- report

def test_report_curves_pngs_and_markdown(tmp_path, capsys):
    root = tmp_path / "runs"
    fake_run(root / "vit" / "seed0", 80.0, 81.0)
    fake_run(root / "vit" / "seed1", 79.0, 80.0)
    fake_run(root / "local" / "seed0", 85.0, None, sizes=(16, 20, 24, 28))
    live = fake_run(root / "live", 0.0, finished=False, evals=0)
    (live / "log.jsonl").write_text((live / "log.jsonl").read_text() + '{"step": 7')  # half line
    dirs = report.discover([root])
    assert [d.relative_to(root).as_posix() for d in dirs] == [
        "live", "local/seed0", "vit/seed0", "vit/seed1"]
    runs = report.load_runs(dirs)
    assert [r["name"] for r in runs] == ["live", "local/seed0", "vit/seed0", "vit/seed1"]
    # One curve per run with evaluations (3); --ema adds one per run with EMA evaluations (2),
    # also when only the final evaluation has one, as the trainer writes it.
    assert len(report.time_to_accuracy_figure(runs).axes[0].lines) == 3
    assert len(report.time_to_accuracy_figure(runs, ema=True).axes[0].lines) == 5
    for e in runs[-1]["evals"][:-1]:
        del e["top1_ema"]
    lines = report.time_to_accuracy_figure(runs, ema=True).axes[0].lines
    assert len(lines) == 5 and list(lines[-1].get_ydata()) == [80.0]
    sched = report.schedule_figure(runs)
    assert [len(ax.lines) for ax in sched.axes] == [4, 4]
    assert max(sched.axes[0].lines[1].get_ydata()) == 28
    assert main(["report", str(root), "--out", str(tmp_path / "rep"), "--ema"]) == 0
    for name in ("time_to_accuracy.png", "schedule.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("\n| ") == 1 + 4 and "| vit/seed0 | vit_micro4 | 80.00 | 81.00 |" in md
    assert "(running or stopped)" in md
    assert md.count(" | cpu |\n") == 3  # (one process each)
    runs[2]["summary"]["world_size"] = 2  # a torchrun run: as many devices
    assert "| 2 x cpu |\n" in report.markdown(runs)
    runs[2]["summary"].update(world_size=1, world_sizes=[2, 1])  # resumed on one process
    assert "| 2→1 x cpu |\n" in report.markdown(runs)


def test_resumed_logs_follow_the_final_timeline(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    steps = [10, 20, 30, 20, 30, 40]  # crashed after 30, resumed from the step-10 checkpoint
    (d / "log.jsonl").write_text("".join(json.dumps({"step": s, "n": i}) + "\n"
                                         for i, s in enumerate(steps)))
    assert [(r["step"], r["n"]) for r in report._timeline(d / "log.jsonl")] == [
        (10, 0), (20, 3), (30, 4), (40, 5)]


def test_report_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err


# ---------------------------------------------------------------- a real tiny bench

TINY = ["train.device=cpu",  # also where there is a GPU: the CUDA tests ask for it
        "model.dim=32", "model.depth=2", "model.heads=2", "train.batch_size=64",
        "train.warmup_steps=1", "train.eval_batch_size=1000", "data.num_workers=0"]


@needs_fmnist
@pytest.mark.slow
def test_bench_runs_arms_then_skips_them_on_rerun(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--preset", "fmnist", "--budget", "6steps", "--arms", "vit,vit+local",
            "--seeds", "1", "--out", str(out), "--set", *TINY]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.count("running") == 2 and "skipping" not in first
    summaries = [out / arm / "seed0" / "summary.json" for arm in ("vit", "vit+local")]
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    s = json.loads(summaries[0].read_text())
    assert s["model"] == "vit_micro4" and s["config"]["curriculum"]["mode"] == "off"
    assert json.loads(summaries[1].read_text())["model"] == "vit_micro4_local"
    results = json.loads((out / "results.json").read_text())
    assert [results["arms"][a]["n"] for a in ("vit", "vit+local")] == [1, 1]
    assert results["arms"]["vit"]["top1"]["mean"] == s["top1"]
    record = json.loads((out / "bench.json").read_text())
    assert record["runs"]["vit/seed0"].startswith("budgetvit train --preset fmnist")
    assert (out / "time_to_accuracy.png").read_bytes().startswith(PNG)

    assert main(argv) == 0  # the rerun finds both runs done
    second = capsys.readouterr().out
    assert second.count("done, skipping") == 2 and "running" not in second
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes
    assert len(json.loads((out / "bench.json").read_text())["commands"]) == 2

    with pytest.raises(ConfigError, match="use another --out"):
        bench.run(bench_args(preset="fmnist", budget="7steps", arms="vit", seeds="1",
                             out=str(out), set=TINY))
