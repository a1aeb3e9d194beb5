"""Stopping a run: a signal outside the training loop, a stop whose final checkpoint fails,
a stop amid non-finite steps, a signal to one rank of two, SIGTERM to every process of a run
with loader workers, and the resume hint each gives."""
import errno
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from budgetvit import checkpoint
from budgetvit.cli import main
from budgetvit.train import Trainer, train

from .conftest import needs_fmnist, quick

pytestmark = needs_fmnist


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_signal_lost_in_a_destructor_still_stops_the_run(tmp_path, monkeypatch, capsys):
    """A signal handled while an object is being destroyed (a loader iterator shutting down its
    workers in the warm-up) raises inside __del__, where Python drops the exception ("Exception
    ignored in"). The run must still stop, at its first sync point, with a checkpoint: it used
    to train its whole budget, deaf to any later signal."""
    from budgetvit.warmup import WarmUp
    trainer = Trainer(quick("train.budget=40steps"), tmp_path, command="budgetvit train")
    real_steps = WarmUp._zero_lr_steps

    class SignalledWhileDestroyed:
        def __del__(self):
            trainer._on_signal(signal.SIGTERM, None)

    def steps_then_signal(self, count):
        real_steps(self, count)
        SignalledWhileDestroyed()  # destroyed at once: its exception goes nowhere
    monkeypatch.setattr(WarmUp, "_zero_lr_steps", steps_then_signal)
    assert trainer.run() == {"interrupted": True, "step": 0}
    assert "stopped by SIGTERM at step 0 " in capsys.readouterr().out
    assert checkpoint.list_checkpoints(tmp_path)[-1].name == "step_00000000.pt"


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
    goal = ("start again (nothing was saved yet)" if phase == "warm-up" else
            "go on from the newest checkpoint")
    assert (f"stopped by {signal.Signals(signum).name} during the {phase}; rerun budgetvit "
            f"train AGAIN to {goal}") in capsys.readouterr().out
    assert not (tmp_path / "summary.json").exists()
    assert bool(checkpoint.list_checkpoints(tmp_path)) == (phase != "warm-up")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.undo()
    assert train(quick(*cfg), tmp_path)["steps"] == 4


def test_a_stop_in_the_warm_up_with_no_reader_left_ends_quietly(tmp_path, monkeypatch):
    """SIGTERM in the warm-up while stdout's reader is gone (a closed terminal, a dead tee):
    saying how to resume must not end the run in a BrokenPipeError instead."""
    from budgetvit.warmup import WarmUp
    real_steps = WarmUp._zero_lr_steps

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_steps(*args)
    monkeypatch.setattr(WarmUp, "_zero_lr_steps", signalled)
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", buffering=1) as gone:  # line-buffered: each line is written at once
        monkeypatch.setattr(sys, "stdout", gone)
        assert Trainer(quick("train.budget=4steps"), tmp_path).run() == {"interrupted": True,
                                                                         "step": 0}


@pytest.fixture
def sighup():
    """Sets SIGHUP's disposition for a test (pytest itself may run under nohup); restores it."""
    before = signal.getsignal(signal.SIGHUP)
    yield lambda disposition: signal.signal(signal.SIGHUP, disposition)
    signal.signal(signal.SIGHUP, before)


def hup_at_step_6(trainer):
    real_step = trainer.step

    def step(*a, **kw):
        if trainer.clock.steps == 5:
            os.kill(os.getpid(), signal.SIGHUP)
        return real_step(*a, **kw)
    trainer.step = step


def test_a_closed_terminal_stops_the_run_with_a_checkpoint(tmp_path, capsys, sighup):
    """SIGHUP (the terminal or ssh session closed) during step 6: the run stops there, as on
    SIGTERM, instead of dying with the steps since its last checkpoint."""
    sighup(signal.SIG_DFL)
    trainer = Trainer(quick("train.budget=40steps"), tmp_path, command="budgetvit train")
    hup_at_step_6(trainer)
    assert trainer.run() == {"interrupted": True, "step": 6}
    assert re.search(r"^stopped by SIGHUP at step 6 .*; checkpoint written\. Resume with: "
                     r"budgetvit train$", capsys.readouterr().out, re.M)
    assert checkpoint.list_checkpoints(tmp_path)[-1].name == "step_00000006.pt"
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # handler restored


def test_a_run_under_nohup_ignores_sighup(tmp_path, sighup):
    """nohup sets SIGHUP to be ignored, so that closing the terminal leaves the run going:
    the trainer keeps that setting instead of stopping on it."""
    sighup(signal.SIG_IGN)
    trainer = Trainer(quick("train.budget=12steps"), tmp_path)
    hup_at_step_6(trainer)
    assert trainer.run()["steps"] == 12
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


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


def training(proc, out, log_lines: int, timeout: float = 90) -> None:
    """Wait until the run in `out` (process proc) has logged log_lines lines, or ended."""
    deadline, log = time.time() + timeout, out / "log.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= log_lines:
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_the_same_step(tmp_path):
    """torchrun, 2 CPU ranks: SIGTERM to rank 1 only. Every rank sees the stop at the same
    sync point, so both stop at the same step with exit 0 and one checkpoint of that step;
    rank 0 says that another rank was signalled."""
    from .test_distributed import _worker_pid, torchrun
    out = tmp_path / "ddp"
    # In a session of its own, so that a failing test can end the launcher and both ranks.
    proc = torchrun(2, out, "2000steps", "data.holdout=0.005", start_new_session=True)
    try:
        training(proc, out, log_lines=3)  # (its signal handlers installed)
        victim = _worker_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None
        os.kill(victim, signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    stopped = dict(re.findall(r"rank (\d)/2: stopped at step (\d+),", output))
    assert set(stopped) == {"0", "1"} and stopped["0"] == stopped["1"], output[-3000:]
    step = int(stopped["0"])
    assert 3 <= step < 2000
    # (Not anchored at a line start: the ranks' lines interleave in the launcher's output.)
    assert re.search(rf"stopped by a signal to another rank at step {step} .*; checkpoint "
                     rf"written\. Resume with: ", output), output[-3000:]
    state = checkpoint.load(checkpoint.list_checkpoints(out)[-1])
    assert state["clock"]["steps"] == step and state["world_size"] == 2
    assert not (out / "summary.json").exists()


def test_sigterm_to_every_process_stops_a_run_with_loader_workers_cleanly(tmp_path):
    """Slurm at a time limit (and `kill -- -PGID`) sends SIGTERM to every process of the job,
    the loader workers too: the run must still stop at its next sync point with a checkpoint
    and the resume hint, exit 0, rather than fail on a worker that died; and end its workers."""
    from .conftest import write_image_tree
    from .test_data_faults import _alive, _children
    tree, out = write_image_tree(tmp_path / "tree"), tmp_path / "run"
    command = [sys.executable, "-m", "budgetvit", "train", "--out", str(out), "--budget",
               "2000steps", "--set", "data.dataset=imagefolder", f"data.path={tree}",
               "data.num_workers=2", "train.batch_size=8", "train.log_every=4",
               "curriculum.mode=off", "train.device=cpu", "train.compile=off"]
    with open(tmp_path / "output", "w") as output:  # (a pipe would need reading meanwhile)
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        training(proc, out, log_lines=2)  # (its workers running)
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) == 2
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = (tmp_path / "output").read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    step = int(re.search(r"stopped by SIGTERM at step (\d+) .*; checkpoint written\. Resume "
                         r"with: \S+ -m budgetvit train --out ", text).group(1))
    assert checkpoint.load(checkpoint.list_checkpoints(out)[-1])["clock"]["steps"] == step
    assert not [pid for pid in workers if _alive(pid)]  # ended with the run


def test_the_resume_hint_runs_budgetvit_as_it_was_run(tmp_path, monkeypatch):
    """`budgetvit` alone only where PATH finds the one that ran: the README's
    `.venv/bin/budgetvit train`, in a shell without the venv activated, resumes with that path."""
    from budgetvit.cli import program
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("budgetvit", "python"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [".venv/bin/budgetvit", "train"])
    assert program() == ".venv/bin/budgetvit"
    monkeypatch.setattr(sys, "argv", [str(bin_dir / "budgetvit"), "train"])
    assert program() == str(bin_dir / "budgetvit")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert program() == "budgetvit"
    monkeypatch.setattr(sys, "argv", ["/x/budgetvit/__main__.py", "train"])  # python -m
    monkeypatch.setattr(sys, "executable", "/elsewhere/python3")
    assert program() == "/elsewhere/python3 -m budgetvit"
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert program() == "python -m budgetvit"


def test_the_resume_hint_under_torchrun_is_the_torchrun_command(tmp_path, monkeypatch):
    """The command alone would resume on one process (another world size, no exact
    continuation): a rank under torchrun gives the torchrun command with as many processes,
    one that can be pasted where the job ran on one node."""
    from budgetvit import train as train_module
    given = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, out, command: given.update(c=command))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "torchrun"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", ["/x/budgetvit/__main__.py", "train", "--out", "r un"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main(["train", "--out", str(tmp_path)]) == 0
    assert given["c"] == "torchrun --standalone --nproc_per_node=2 -m budgetvit train --out 'r un'"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # torchrun by its path, where PATH lacks it
    monkeypatch.setattr(sys, "argv", [".venv/bin/budgetvit", "train"])
    monkeypatch.setenv("WORLD_SIZE", "8")  # 2 nodes of 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert main(["train", "--out", str(tmp_path)]) == 0
    assert given["c"] == (f"on each of the 2 nodes, {bin_dir / 'torchrun'} --nnodes=2 "
                          f"--nproc_per_node=4 (your rendezvous options) .venv/bin/budgetvit "
                          f"train")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # another launcher (srun): its options unknown
    assert main(["train", "--out", str(tmp_path)]) == 0
    assert given["c"] == ("the same launcher command (.venv/bin/budgetvit train in each of 8 "
                          "processes)")
