"""Edge cases of resuming, stopping and rerunning a run: config changes at a resume (optimizer
settings, curriculum, precision), config values that are not numbers, the logs across rollbacks
and fresh runs, a step budget off the sync grid, a finished run rerun, a kill around the final
evaluation, a signal outside the training loop, a stop whose final checkpoint fails, a stop on
one rank of two, and the wall time counting setup."""
import errno
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from budgetvit import checkpoint
from budgetvit.cli import main
from budgetvit.train import Trainer, train

from .conftest import crash_at_step, needs_fmnist, tiny_config

pytestmark = needs_fmnist

# Evaluations on 300 held-out training images instead of the 10000 test images: the tests
# here are about the run's bookkeeping, not its accuracy.
SMALL_EVAL = ("data.holdout=0.005", "train.ema=false")


def quick(*overrides: str):
    return tiny_config(*SMALL_EVAL, *overrides)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_applies_the_new_weight_decay_and_betas(tmp_path, capsys):
    """The optimizer state loaded from a checkpoint carries that run's weight decay and betas in
    its param groups; a resume with other values must train with the new ones (the exempt group
    keeps weight decay 0), also in the checkpoints it writes from then on."""
    out = tmp_path / "run"
    train(quick("train.budget=3steps"), out)
    saved = checkpoint.load_latest(out)["optimizer"]["param_groups"]
    assert [(g["weight_decay"], tuple(g["betas"])) for g in saved] == [(0.05, (0.9, 0.999)),
                                                                        (0.0, (0.9, 0.999))]
    capsys.readouterr()

    trainer = Trainer(quick("train.budget=5steps", "optim.weight_decay=0.2", "optim.beta1=0.8"),
                      out)
    summary = trainer.run()
    assert summary["steps"] == 5
    said = capsys.readouterr().out
    assert ("warning: resuming with a config that differs from the checkpoint's in "
            "optim.weight_decay, optim.beta1, train.budget; the new values apply from here on"
            in said)
    decay, exempt = trainer.opt.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "blocks.0.norm1.weight"} <= {names[id(p)] for p in exempt["params"]}
    assert decay["weight_decay"] == 0.2 and exempt["weight_decay"] == 0.0
    assert decay["betas"] == exempt["betas"] == (0.8, 0.999)
    written = checkpoint.load_latest(out)
    assert written["clock"]["steps"] == 5
    assert [(g["weight_decay"], tuple(g["betas"])) for g in written["optimizer"]["param_groups"]] \
        == [(0.2, (0.8, 0.999)), (0.0, (0.8, 0.999))]


def test_resume_with_another_curriculum_keeps_the_plan_and_says_so(tmp_path, capsys):
    """The size plan is made once: a resume with other curriculum.stages warns that the run
    keeps the curriculum it started with, and trains by the checkpoint's plan (16 px to half the
    budget, then 28 px), not the new one (20 px for three quarters)."""
    args = ("train.budget=12steps", "checkpoint.every_steps=4")
    crash_at_step(quick(*args), tmp_path, 6)
    state = checkpoint.load_latest(tmp_path)
    assert state["clock"]["steps"] == 4  # resumed inside the 16 px stage
    plan = state["plan"]
    assert plan == [{"size": 16, "start": 0.0, "end": 0.5}, {"size": 28, "start": 0.5, "end": 1.0}]
    capsys.readouterr()

    summary = train(quick(*args, "curriculum.stages=20:0.75,28:0.25"), tmp_path)
    said = capsys.readouterr().out
    assert ("warning: curriculum.stages changed, but a run keeps the curriculum it started "
            "with; to train another, use another --out") in said
    assert "resuming with a config that differs" not in said  # nothing else changed
    assert "curriculum: 16px@0% -> 28px@50%;" in said
    assert summary["steps"] == 12 and summary["plan"] == plan
    assert [(st["img_size"], st["images"]) for st in summary["stages"]] == [(16, 6 * 64),
                                                                           (28, 6 * 64)]
    assert {r["img_size"] for r in records(tmp_path / "log.jsonl") if r["step"] <= 6} == {16}


def test_resume_with_another_final_size_evaluates_at_the_run_s(tmp_path, capsys):
    """The warning says the run keeps its curriculum: its evaluations and summary are at the
    final size it trains to (28 px), not at the new config's 16 px."""
    args = ("train.budget=6steps", "checkpoint.every_steps=2")
    crash_at_step(quick(*args), tmp_path, 3)
    summary = train(quick(*args, "curriculum.final_size_px=16",
                          "curriculum.stages=16:1"), tmp_path)
    assert "but a run keeps the curriculum it started with" in capsys.readouterr().out
    assert summary["final_img_size"] == 28 and summary["config"]["curriculum"]["stages"] != \
        "16:1"
    assert {e["img_size"] for e in records(tmp_path / "eval.jsonl")} == {28}


def test_a_larger_budget_reads_the_paper_rule_again(tmp_path):
    """The paper rule gives each size N epochs: a 20-step run (16, 20, 24 px for 3.75 steps
    each, then 28 px) given 40 steps trains on as a 40-step run does (at 28 px from step 13),
    not at the 20-step plan's shares of 40 steps (back to 24 px after step 20)."""
    args = ("curriculum.mode=paper", "curriculum.start_size_px=16", "curriculum.step_px=4",
            "curriculum.every_epochs=0.004", "train.log_every=1", "train.ema=false")
    train(quick("train.budget=20steps", *args), tmp_path / "grown")
    grown = train(quick("train.budget=40steps", *args), tmp_path / "grown")
    straight = train(quick("train.budget=40steps", *args), tmp_path / "straight")
    assert grown["plan"] == straight["plan"]
    sizes = [r["img_size"] for r in records(tmp_path / "grown" / "log.jsonl")]
    assert sizes == [r["img_size"] for r in records(tmp_path / "straight" / "log.jsonl")]
    assert sizes == sorted(sizes) and sizes.count(28) == 40 - 12  # 3.75 steps at each other


@pytest.mark.parametrize("change, reason", [
    ("train.batch_size=32", "train.batch_size 64 -> 32"),
    ("data.holdout=0.1", "data.holdout 0.0 -> 0.1, 2000 -> 1800 training images"),
    ("data.synthetic_images=1000", "2000 -> 1000 training images")])
def test_resume_that_would_move_the_data_position_is_refused(tmp_path, capsys, change, reason):
    """The checkpoint's place in the data (epoch, batch) counts batches of its batch size in
    its training images: another batch size, image count or holdout would resume elsewhere
    (or train on held-out images), so it is one line and exit 2, not a traceback or a quietly
    wrong run."""
    def run(budget, *changes):
        return main(["train", "--budget", budget, "--out", str(tmp_path), "--set",
                     "data.dataset=synthetic", "data.synthetic_images=2000",
                     "train.batch_size=64", "curriculum.mode=off", "model.name=vit_micro4",
                     "train.eval_batch_size=256", *changes])
    assert run("3steps") == 0
    capsys.readouterr()
    assert run("5steps", change) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out {tmp_path} holds a run this config cannot go on from "
                   f"({reason}): its place in the data would point elsewhere, or the run would "
                   f"train on images it held out; use another --out, or that run's values")


def test_fp32_run_resumes_in_fp16_on_cpu(tmp_path, capsys):
    """An fp32 run's checkpoint holds an empty loss-scaler state; resuming it with
    train.precision=fp16 (GradScaler enabled; CPU autocast runs float16 in this torch) must
    start a fresh scaler instead of failing to load the empty one, then train and save it."""
    out = tmp_path / "run"
    train(quick("train.budget=2steps", "curriculum.stages=16:1", "curriculum.final_size_px=16"),
          out)
    assert checkpoint.load_latest(out)["scaler"] == {}
    trainer = Trainer(quick("train.budget=3steps", "curriculum.stages=16:1",
                            "curriculum.final_size_px=16", "train.precision=fp16"), out)
    assert trainer.scaler.is_enabled() and trainer.rt.amp_dtype == torch.float16
    summary = trainer.run()
    assert summary["steps"] == 3 and math.isfinite(summary["top1"])
    assert "resuming" in capsys.readouterr().out
    scaler = checkpoint.load_latest(out)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


@pytest.mark.parametrize("setting,message", [
    ("optim.warmup=nan", "optim.warmup: expected a finite number, got 'nan'"),
    ("optim.lr=inf", "optim.lr: expected a finite number, got 'inf'"),
    ("optim.weight_decay=-inf", "optim.weight_decay: expected a finite number, got '-inf'"),
    ("curriculum.stages=0:0.5,28:0.5", "curriculum.stages size=0 must be >= 1"),
    ("model.mlp_ratio=0.01",  # the fmnist preset's model is 96 wide: int(0.96) = 0 units
     "model.mlp_ratio=0.01 leaves the FFN of model.dim=96 no hidden unit"),
])
def test_values_that_are_no_usable_number_give_one_line(setting, message, capsys):
    """nan passes every range check (each comparison is False), inf overflows the schedules, a
    0 px stage is a multiple of every patch size, and a tiny mlp_ratio leaves a 0-wide FFN: each
    is refused by validation, in one line on stderr with exit code 2, before anything runs."""
    assert main(["train", "--print-config", "--set", setting]) == 2
    said = capsys.readouterr()
    assert said.err == f"error: {message}\n"
    assert said.out == ""  # the config was not printed


def test_step_budget_off_the_sync_grid_ends_and_logs_at_the_budget(tmp_path, monkeypatch):
    """40 steps with a sync every 7 (0, 7, ..., 35): the last step is a sync point too, so the
    run stops at exactly 40 steps, logs step 40, and the last stage ends at the final clock
    reading. Each step is slowed by 100 ms so that the last sync interval (steps 36-40) is at
    least 500 ms: a stage end read at step 35 would miss it by that much."""
    cfg = quick("train.budget=40steps", "train.sync_every=7", "train.log_every=5")
    trainer = Trainer(cfg, tmp_path)
    real_step = trainer.step

    def slow_step(*a, **kw):
        time.sleep(0.1)
        return real_step(*a, **kw)
    trainer.step = slow_step
    s = trainer.run()
    assert s["steps"] == 40 and s["images_seen"] == 40 * 64
    logs = records(tmp_path / "log.jsonl")
    # Logged at the first sync past each multiple of 5, and at the budget's last step.
    assert [r["step"] for r in logs] == [7, 14, 21, 28, 35, 40]
    assert logs[-1]["images"] == 40 * 64
    assert s["last_step_s"] >= 5 * 0.1
    # end_s is the last sync's reading; train_time_s is read when the clock stops right after
    # (the last log line is written in between): the same moment but for that write.
    gap = s["train_time_s"] - s["stages"][-1]["end_s"]
    assert 0 <= gap < 0.25, gap  # (slack for a loaded machine; a missed interval is >= 0.5)
    assert sum(st["images"] for st in s["stages"]) == 40 * 64


def test_rerunning_a_finished_run_returns_its_summary_without_training(tmp_path, capsys):
    """The exact command of a finished run again: the same summary, printed again, and no
    evaluation, log line or checkpoint added; a larger budget then trains on from there."""
    args = ("train.budget=4steps", "train.log_every=1")
    first = train(quick(*args), tmp_path)
    files = {name: (tmp_path / name).read_bytes()
             for name in ("summary.json", "eval.jsonl", "log.jsonl")}
    ckpts = [(p.name, p.stat().st_mtime_ns) for p in checkpoint.list_checkpoints(tmp_path)]
    capsys.readouterr()

    again = train(quick(*args), tmp_path)
    said = capsys.readouterr().out
    first_line = said.splitlines()[0]
    assert first_line.startswith(f"{tmp_path} holds a finished run (step 4); ")
    assert "--budget" in first_line
    assert "resuming" not in said and f"top-1 {first['top1']:.2f}%" in said
    assert again == json.loads(files["summary.json"])
    assert (again["top1"], again["steps"], len(again["evals"])) == \
        (first["top1"], 4, len(first["evals"])) == (first["top1"], 4, 1)
    assert {name: (tmp_path / name).read_bytes() for name in files} == files
    assert [(p.name, p.stat().st_mtime_ns) for p in checkpoint.list_checkpoints(tmp_path)] == ckpts

    more = train(quick("train.budget=6steps", "train.log_every=1"), tmp_path)
    said = capsys.readouterr().out
    assert "holds a finished run" not in said and "\nresuming vit_micro4_local" in said
    assert more["steps"] == 6
    assert [r["step"] for r in records(tmp_path / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in records(tmp_path / "eval.jsonl")] == [4, 6]
    assert [e["step"] for e in more["evals"]] == [4, 6]  # the final checkpoint holds step 4's


def test_raising_a_finished_runs_budget_evaluates_each_step_once(tmp_path):
    """An evaluation every step, 4 steps, then the budget raised to 6: the run goes on from the
    finished run's checkpoint, whose step 4 was evaluated at the end. eval.jsonl and the
    summary's evals must both read 0, 1, ..., 6, each step once."""
    args = ("train.eval_every_s=1e-9", "train.log_every=1")
    train(quick("train.budget=4steps", *args), tmp_path)
    summary = train(quick("train.budget=6steps", *args), tmp_path)
    assert [e["step"] for e in records(tmp_path / "eval.jsonl")] == list(range(0, 7))
    assert [e["step"] for e in summary["evals"]] == list(range(0, 7))


class Killed(BaseException):
    """A kill -9 at a chosen point (BaseException: no handler of the trainer catches it)."""


@pytest.mark.parametrize("killed", ["before the checkpoint that holds it",
                                    "before summary.json"])
def test_a_run_killed_after_its_final_evaluation_is_evaluated_once(tmp_path, monkeypatch,
                                                                   killed):
    """Killed after the final evaluation, before the checkpoint that holds it (the rerun
    evaluates again, and eval.jsonl must not keep the lost one too) or after it, before
    summary.json (the rerun must not evaluate again): one final evaluation either way, with
    its EMA figure."""
    from budgetvit import train as train_module
    from budgetvit.trainer_state import TrainerState
    cfg = ("data.holdout=0.005", "train.budget=4steps")
    kill = {"at": killed}
    real_save, real_summary = TrainerState.save_checkpoint, train_module.write_summary

    def save_checkpoint(trainer):
        if trainer.evals and kill["at"] == "before the checkpoint that holds it":
            raise Killed
        return real_save(trainer)

    def write_summary(*args):
        if kill["at"] == "before summary.json":
            raise Killed
        return real_summary(*args)
    monkeypatch.setattr(TrainerState, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(train_module, "write_summary", write_summary)
    with pytest.raises(Killed):
        train(tiny_config(*cfg), tmp_path)
    assert [e["step"] for e in records(tmp_path / "eval.jsonl")] == [4]

    kill["at"], evaluations, real_evaluate = None, [], train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate",
                        lambda *a: evaluations.append(a) or real_evaluate(*a))
    summary = train(tiny_config(*cfg), tmp_path)
    assert len(evaluations) == (0 if killed == "before summary.json" else 2)  # model + EMA
    assert [e["step"] for e in records(tmp_path / "eval.jsonl")] == [4]
    assert [e["step"] for e in summary["evals"]] == [4] and "top1_ema" in summary["evals"][0]


@pytest.mark.parametrize("signum, phase", [(signal.SIGINT, "warm-up"),
                                           (signal.SIGTERM, "final checkpoint and evaluation")])
def test_a_signal_outside_the_loop_stops_at_once_and_says_how_to_go_on(tmp_path, monkeypatch,
                                                                      capsys, signum, phase):
    """Ctrl-C in the warm-up (minutes of compiling on a GPU), SIGTERM in the final evaluation:
    no step to finish, so the run stops there (no traceback, no exit 143), says so, and the
    same command then finishes the run."""
    from budgetvit import train as train_module
    from budgetvit.warmup import WarmUp
    real_steps, real_evaluate = WarmUp._zero_lr_steps, train_module.evaluate

    def signalled(real):
        def call(*args):
            os.kill(os.getpid(), signum)
            return real(*args)
        return call
    if phase == "warm-up":
        monkeypatch.setattr(WarmUp, "_zero_lr_steps", signalled(real_steps))
    else:
        monkeypatch.setattr(train_module, "evaluate", signalled(real_evaluate))
    cfg = ("train.budget=4steps", "train.warmup_steps=1")
    trainer = Trainer(quick(*cfg), tmp_path, command="budgetvit train AGAIN")
    assert trainer.run()["interrupted"]
    assert (f"stopped by {signal.Signals(signum).name} during the {phase}; rerun budgetvit "
            f"train AGAIN to go on from the newest checkpoint") in capsys.readouterr().out
    assert not (tmp_path / "summary.json").exists()
    assert bool(checkpoint.list_checkpoints(tmp_path)) == (phase != "warm-up")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    assert train(quick(*cfg), tmp_path)["steps"] == 4


def test_logs_after_a_rollback_hold_each_step_once(tmp_path, capsys):
    """Three non-finite steps (12-14) roll the run back to its step-10 checkpoint, and steps
    11-14 are trained again: log.jsonl and eval.jsonl (a line and an evaluation every step)
    must read 1, 2, ..., 18 (evaluations from step 0) with no record of the undone steps left
    in them."""
    cfg = quick("train.budget=18steps", "checkpoint.every_steps=5", "train.max_bad_steps=3",
                "train.max_rollbacks=1", "train.log_every=1", "train.eval_every_s=1e-9")
    trainer = Trainer(cfg, tmp_path)
    real_loss, bad = trainer.loss_fn, {12, 13, 14}

    def loss_fn(logits, y):
        step = trainer.clock.steps + 1
        if step in bad:
            bad.discard(step)  # clean when replayed after the rollback
            return real_loss(logits, y) * math.nan
        return real_loss(logits, y)
    trainer.loss_fn = loss_fn
    summary = trainer.run()
    assert summary["faults"]["rollbacks"] == 1 and summary["faults"]["nonfinite_steps"] == 3
    assert "rolled back to step 10 with lr x0.5" in capsys.readouterr().out
    assert [r["step"] for r in records(tmp_path / "log.jsonl")] == list(range(1, 19))
    assert tensorboard_steps(tmp_path, "train/loss") == list(range(1, 19))
    assert [e["step"] for e in records(tmp_path / "eval.jsonl")] == list(range(0, 19))
    assert [e["step"] for e in summary["evals"]] == list(range(0, 19))
    # No line of the undone steps survives: theirs had a loss of 0 (no good step to average).
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0
               for r in records(tmp_path / "log.jsonl"))


def test_a_run_killed_in_its_final_evaluation_keeps_its_last_interval(tmp_path):
    """last_step_s bounds the overrun: the rerun of a run killed during its final evaluation
    takes no step, and must report the interval its checkpoint holds, not ~0."""
    cfg = quick("train.budget=6steps")
    trainer = Trainer(cfg, tmp_path)
    real_eval = trainer.run_eval

    def killed_in_final(train_s, final=False):
        if final:
            raise RuntimeError("killed during the final evaluation")
        return real_eval(train_s, final)
    trainer.run_eval = killed_in_final
    with pytest.raises(RuntimeError, match="killed during"):
        trainer.run()
    saved = checkpoint.load_latest(tmp_path)["last_step_s"]
    assert saved > 0.0 and train(cfg, tmp_path)["last_step_s"] == saved


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of `tag` that TensorBoard shows for a run directory (all its event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """A run crashes at step 13 after its step-10 checkpoint, its events up to step 12
    written; the resumed run replays 11-20. TensorBoard must show each step once, as
    log.jsonl does (the replayed steps' first events are purged), and a fresh run in the
    folder afterwards shows none of the old run's."""
    pytest.importorskip("tensorboard")
    cfg = quick("train.budget=20steps", "checkpoint.every_steps=5", "train.log_every=2")
    crashing = Trainer(cfg, tmp_path)
    real_step = crashing.step

    def step_then_crash(*a, **kw):
        if crashing.clock.steps == 13:
            raise RuntimeError("simulated crash")
        return real_step(*a, **kw)
    crashing.step = step_then_crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run()
    crashing.progress.close()  # its events reach the disk, as at the exit of a crashed run
    assert tensorboard_steps(tmp_path, "train/loss") == list(range(2, 13, 2))
    train(cfg, tmp_path)
    steps = [r["step"] for r in records(tmp_path / "log.jsonl")]
    assert tensorboard_steps(tmp_path, "train/loss") == steps == list(range(2, 21, 2))
    shutil.rmtree(tmp_path / "checkpoints")
    train(quick("train.budget=4steps", "train.log_every=2"), tmp_path)
    assert tensorboard_steps(tmp_path, "train/loss") == [2, 4]


def test_an_evaluation_undone_by_a_rollback_is_made_up_at_once(tmp_path):
    """Evaluations every 10 s of a clock that ticks 1 s per reading; steps 17-19 roll the run
    back to step 10, taking back the evaluation made after it. The next one is due from the
    evaluations the run still holds, not from the undone one: no gap of two intervals."""
    cfg = quick("train.budget=30steps", "checkpoint.every_steps=10", "train.max_bad_steps=3",
                "train.max_rollbacks=1", "train.log_every=1", "train.eval_every_s=10")
    trainer = Trainer(cfg, tmp_path)
    ticks = itertools.count()
    trainer.clock.read = lambda: float(next(ticks))
    real_loss, bad = trainer.loss_fn, {17, 18, 19}

    def loss_fn(logits, y):
        step = trainer.clock.steps + 1
        if step in bad:
            bad.discard(step)
            return real_loss(logits, y) * math.nan
        return real_loss(logits, y)
    trainer.loss_fn = loss_fn
    summary = trainer.run()
    assert summary["faults"]["rollbacks"] == 1
    times = [e["train_time_s"] for e in summary["evals"]]
    assert max(b - a for a, b in zip(times, times[1:])) < 15, times


def test_fresh_run_replaces_the_logs_of_an_older_run(tmp_path):
    """A run directory with log.jsonl and eval.jsonl but no checkpoint (a run whose checkpoints
    were deleted): the new run starts new logs, with none of the old records, whatever their
    steps (earlier than, equal to or past the new run's)."""
    old = [{"step": s, "loss": 9.0, "old": True} for s in (1, 3, 50)]
    for name in ("log.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in old))
    train(quick("train.budget=3steps", "train.log_every=1"), tmp_path)
    logs, evals = records(tmp_path / "log.jsonl"), records(tmp_path / "eval.jsonl")
    assert [r["step"] for r in logs] == [1, 2, 3] and [e["step"] for e in evals] == [3]
    assert not any("old" in r for r in logs + evals)


def test_stop_whose_checkpoint_fails_says_it_was_not_written(tmp_path, monkeypatch, capsys):
    """SIGTERM during step 6, and the disk is full when the stop's checkpoint is written: the
    message must say NO checkpoint was written (a resume goes back to step 4), never
    that it was."""
    cfg = quick("train.budget=40steps", "checkpoint.every_steps=4")
    trainer = Trainer(cfg, tmp_path, command="budgetvit train --out RUN")
    real_step, real_save, disk_full = trainer.step, torch.save, []

    def step(*a, **kw):
        if trainer.clock.steps == 5:
            disk_full.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler records it
        return real_step(*a, **kw)

    def save(obj, f, *a, **kw):
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)
    trainer.step = step
    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert trainer.run() == {"interrupted": True, "step": 6}
    said = capsys.readouterr().out
    assert ("warning: checkpoint at step 6 not written (No space left on device); keeping the "
            "previous one, retrying later") in said
    stop = re.search(r"^stopped by SIGTERM at step 6 .*$", said, re.M)
    assert stop, said
    assert ("; NO checkpoint written at this step (see the warnings above); resuming goes back "
            "to the previous one. Resume with: budgetvit train --out RUN") in stop.group(0)
    assert "); checkpoint written." not in said
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == \
        ["step_00000000.pt", "step_00000004.pt"]
    assert not (tmp_path / "summary.json").exists()


def test_a_stop_amid_non_finite_steps_writes_no_checkpoint_there(tmp_path, capsys):
    """SIGTERM during step 6 while steps 5 and 6 are non-finite (max_bad_steps not reached): a
    checkpoint there would make a resume start inside the bad run, with its rollback point
    behind it, so none is written, and the message says so."""
    cfg = quick("train.budget=40steps", "checkpoint.every_steps=4", "train.max_bad_steps=5")
    trainer = Trainer(cfg, tmp_path, command="budgetvit train --out RUN")
    real_loss = trainer.loss_fn

    def loss_fn(logits, y):
        step = trainer.clock.steps + 1
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(logits, y) * (math.nan if step in (5, 6) else 1.0)
    trainer.loss_fn = loss_fn
    assert trainer.run() == {"interrupted": True, "step": 6}
    said = capsys.readouterr().out
    assert "warning: non-finite loss or gradient at step 6; update skipped" in said
    assert re.search(r"^stopped by SIGTERM at step 6 .*; NO checkpoint written at this step",
                     said, re.M), said
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == \
        ["step_00000000.pt", "step_00000004.pt"]


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path):
    """torchrun, 2 CPU ranks: SIGTERM to rank 1 only. Every rank sees the stop at the same
    sync point, so both finish at the same step with exit 0 and one checkpoint of that step;
    rank 0 says that another rank was signalled."""
    from .test_distributed import _worker_pid, torchrun
    out = tmp_path / "ddp"
    # In a session of its own, so that a failing test can end the launcher and both ranks.
    proc = torchrun(2, out, "2000steps", "data.holdout=0.005", start_new_session=True)
    try:
        deadline = time.time() + 90
        log = out / "log.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break  # training, with the signal handlers installed
            time.sleep(0.1)
        victim = _worker_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None
        os.kill(victim, signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    finished = dict(re.findall(r"rank (\d)/2: finished at step (\d+),", output))
    assert set(finished) == {"0", "1"} and finished["0"] == finished["1"], output[-3000:]
    step = int(finished["0"])
    assert 3 <= step < 2000
    # (Not anchored at a line start: the ranks' lines interleave in the launcher's output.)
    assert re.search(rf"stopped by a signal to another rank at step {step} .*; checkpoint "
                     rf"written\. Resume with: ", output), output[-3000:]
    state = checkpoint.load(checkpoint.list_checkpoints(out)[-1])
    assert state["clock"]["steps"] == step and state["world_size"] == 2
    assert not (out / "summary.json").exists()


def test_wall_time_counts_the_setup(tmp_path, monkeypatch):
    """summary.json's wall_time_s runs from the Trainer's construction, so slow setup (here a
    data scan made 2 s slower) is counted: it is the whole time from Trainer() to the summary,
    up to the end-of-run printing."""
    from budgetvit import train as train_module
    real_build = train_module.build_data

    def slow_build(*a, **kw):
        time.sleep(2.0)
        return real_build(*a, **kw)
    monkeypatch.setattr(train_module, "build_data", slow_build)
    t0 = time.perf_counter()
    trainer = Trainer(quick("train.budget=2steps"), tmp_path)
    setup = time.perf_counter() - t0
    summary = trainer.run()
    total = time.perf_counter() - t0
    assert setup >= 2.0
    assert total - 1.5 <= summary["wall_time_s"] <= total  # (slack for a loaded machine)
    assert summary["wall_time_s"] >= setup + summary["train_time_s"] + summary["eval_time_s"]


def test_the_resume_hint_under_torchrun_names_torchrun(tmp_path, monkeypatch):
    """The command alone would resume on one process (another world size, no exact
    continuation): a rank under torchrun says to rerun the torchrun command."""
    from budgetvit import train as train_module
    given = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, out, command: given.update(c=command))
    monkeypatch.setattr(sys, "argv", ["budgetvit", "train", "--out", str(tmp_path)])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--out", str(tmp_path)]) == 0
    assert given["c"] == f"the same torchrun command (budgetvit train --out {tmp_path} under " \
                         f"torchrun)"
