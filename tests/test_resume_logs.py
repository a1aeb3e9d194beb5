"""The records of a run across resumes, rollbacks and reruns: log.jsonl, eval.jsonl,
TensorBoard and summary.json read as one uninterrupted run (each step once, each evaluation
once), a step budget off the sync grid, a finished run rerun or given a larger budget, a kill
around the final evaluation, a fresh run in an old folder, and the wall time counting setup."""
import itertools
import json
import math
import shutil
import time
from pathlib import Path

import pytest

from budgetvit import checkpoint
from budgetvit.train import Trainer, train

from .conftest import crash_at_step, needs_fmnist, quick, records, tiny_config

pytestmark = needs_fmnist


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


def test_a_line_logged_before_a_resumes_first_step_has_the_lr_of_the_step_before(tmp_path):
    """Resumed with a shorter train.log_every: the first sync, before any step, logs the
    steps before the checkpoint (step 7 crosses 5); its lr is that of step 7, not 0."""
    args = ("train.budget=12steps", "checkpoint.every_steps=7")
    crash_at_step(quick(*args, "train.log_every=20"), tmp_path / "run", 9)
    train(quick(*args, "train.log_every=5"), tmp_path / "run")
    logged = records(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in logged] == [7, 10, 12]  # (12: the steps after the last line)
    train(quick(*args, "train.log_every=7"), tmp_path / "straight")
    assert logged[0]["lr"] == records(tmp_path / "straight" / "log.jsonl")[0]["lr"] > 0


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

    # Settings changed for a finished run are not applied: said, not silently dropped.
    assert train(quick(*args, "optim.lr=1e-3", "aug.hflip=false"), tmp_path) == again
    assert "\nnote: not applied, the run being finished: optim.lr, aug.hflip\n" in \
        capsys.readouterr().out

    (tmp_path / "summary.json").write_text('{"top1": ')  # damaged (a disk that filled, say)
    rewritten = train(quick(*args), tmp_path)
    assert (rewritten["top1"], rewritten["steps"]) == (first["top1"], 4)
    assert json.loads((tmp_path / "summary.json").read_text())["top1"] == first["top1"]
    assert (tmp_path / "eval.jsonl").read_bytes() == files["eval.jsonl"]  # not evaluated again

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
    its EMA figure. Likewise one log line of the steps after the last log_every multiple."""
    from budgetvit import train as train_module
    from budgetvit.trainer_state import TrainerState
    cfg = ("data.holdout=0.005", "train.budget=4steps", "train.log_every=3")
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
    assert [r["step"] for r in records(tmp_path / "log.jsonl")] == [3, 4]


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


def test_fresh_run_removes_the_summary_of_an_older_run(tmp_path):
    """Run A finished; its checkpoints were deleted and run B (another lr) started in the same
    folder, and was killed in its final evaluation: the rerun evaluates B and reports B, not
    A's summary left on disk (which has B's step count)."""
    train(quick("train.budget=2steps", "optim.lr=1e-5"), tmp_path)
    shutil.rmtree(tmp_path / "checkpoints")
    b = quick("train.budget=2steps", "optim.lr=2e-3")
    crashing = Trainer(b, tmp_path)
    real_eval = crashing.run_eval

    def run_eval(train_s, final=False):
        if final:
            raise Killed
        return real_eval(train_s, final)
    crashing.run_eval = run_eval
    with pytest.raises(Killed):
        crashing.run()
    assert not (tmp_path / "summary.json").exists()
    summary = train(quick("train.budget=2steps", "optim.lr=2e-3"), tmp_path)
    assert summary["config"]["optim"]["lr"] == 2e-3
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["optim"]["lr"] == 2e-3


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
