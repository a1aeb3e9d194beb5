"""Nothing lost under kills and full disks: SIGKILL chaos with exact resume, SIGTERM,
checkpoint write failures, and a GPU random state that restores where fewer GPUs are visible."""
import errno
import json
import random
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from budgetvit import checkpoint
from budgetvit.cli import main
from budgetvit.train import Trainer
from budgetvit.trainer_state import TrainerState

from .conftest import crash_at_step, needs_fmnist, tiny_config

pytestmark = needs_fmnist

TINY = ["train.device=cpu",  # also where there is a GPU: the CUDA tests ask for it
        "model.dim=32", "model.depth=2", "model.heads=2", "train.batch_size=32",
        "train.eval_batch_size=2000", "train.warmup_steps=1", "train.log_every=1",
        "curriculum.stages=16:0.5,28:0.5", "train.deterministic=true", "model.drop_path=0.1",
        "aug.random_erasing=0.25", "aug.mixup=0.2",
        "data.holdout=0.005"]  # (the end evaluates 300 held-out images, not the 10,000 of test)


def command(out, budget, *extra):
    return [sys.executable, "-m", "budgetvit", "train", "--budget", budget, "--out", str(out),
            "--set", *TINY, *extra]


def all_checkpoints_load(out) -> int:
    """Every checkpoint file on disk loads; returns the newest step (-1 if none)."""
    steps = []
    for path in checkpoint.list_checkpoints(out):
        state = checkpoint.load(path)
        steps.append(state["clock"]["steps"])
    return max(steps, default=-1)


def writing_checkpoint(out, pid: int) -> bool:
    """Process `pid` is writing a checkpoint: its temporary file exists (one a killed process
    left behind has that process's pid in its name)."""
    folder = checkpoint.checkpoint_dir(out)
    return folder.is_dir() and any(p.name.startswith(".step_") and p.name.endswith(f".tmp{pid}")
                                   for p in folder.iterdir())


def log_steps(out) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.slow
def test_sigkill_chaos_resumes_to_identical_weights(tmp_path):
    budget, extra = "120steps", ["checkpoint.every_steps=4"]
    reference = tmp_path / "reference"  # (alongside the chaos: its training is deterministic)
    with open(tmp_path / "reference.log", "w") as log:
        ref_proc = subprocess.Popen(command(reference, budget, *extra), stdout=log,
                                    stderr=subprocess.STDOUT)

    out, rng = tmp_path / "chaos", random.Random(0)
    kills = during_write = 0
    newest = -1
    while not (out / "summary.json").exists():
        proc = subprocess.Popen(command(out, budget, *extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if kills < 5:  # (each costs a process start, ~7 s: the suite's longest test)
            start = log_steps(out)
            deadline = time.time() + 60
            # Alternate: kill at a random moment once training has resumed, or the instant
            # this process writes a checkpoint.
            want_write = kills % 2 == 1
            delay = rng.uniform(0.0, 0.4)
            while proc.poll() is None and time.time() < deadline:
                if want_write and writing_checkpoint(out, proc.pid):
                    during_write += 1
                    break
                if not want_write and log_steps(out) > start:
                    time.sleep(delay)
                    break
                time.sleep(0.0005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.wait(timeout=120)
        step = all_checkpoints_load(out)
        assert step >= newest  # a kill never takes away a checkpoint that was there
        newest = step
    assert kills == 5 and during_write >= 2
    assert ref_proc.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    final = checkpoint.load(checkpoint.list_checkpoints(out)[-1])
    ref = checkpoint.load(checkpoint.list_checkpoints(reference)[-1])
    assert final["clock"]["steps"] == ref["clock"]["steps"] == 120
    assert all(torch.equal(final["model"][k], ref["model"][k]) for k in ref["model"])
    assert all(torch.equal(final["ema"]["weights"][k], ref["ema"]["weights"][k])
               for k in ref["model"])
    assert json.loads((out / "summary.json").read_text())["top1"] == \
        json.loads((reference / "summary.json").read_text())["top1"]


def test_a_closed_output_pipe_stops_the_run_with_a_checkpoint(tmp_path):
    """`budgetvit train ... | head -1`, or a tee / ssh session that died: the next progress
    line finds no reader. The run stops as on SIGTERM, with a checkpoint (it used to exit 0
    at once, silently, losing the steps since the last one)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(command(out, "400steps"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # The header's two lines, then the reader goes. (Not after the first: the header's last
    # newline may be a write of its own, with PYTHONUNBUFFERED, failing in the warm-up.)
    assert proc.stdout.readline().startswith("training ")
    assert proc.stdout.readline().startswith("curriculum: ")
    proc.stdout.close()
    _, errors = proc.communicate(timeout=120)
    assert proc.returncode == 0 and errors == "", errors
    stopped_at = checkpoint.load(checkpoint.list_checkpoints(out)[-1])["clock"]["steps"]
    assert 0 < stopped_at < 400 and not (out / "summary.json").exists()


def test_sigterm_writes_checkpoint_exits_0_and_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = command(out, "100steps")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while log_steps(out) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopped by SIGTERM at step" in output
    # (`python` where that is this Python, else its path)
    assert re.search(r"Resume with: \S*python\S* -m budgetvit train --budget 100steps", output)
    stopped_at = checkpoint.load(checkpoint.list_checkpoints(out)[-1])["clock"]["steps"]
    assert 3 <= stopped_at < 100
    assert not (out / "summary.json").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("resuming")
    assert json.loads((out / "summary.json").read_text())["steps"] == 100


def test_failed_checkpoint_write_keeps_previous_and_retries(tmp_path, monkeypatch, capsys):
    cfg = tiny_config("train.budget=12steps", "checkpoint.every_steps=4")
    trainer = Trainer(cfg, tmp_path / "run")
    real_save, calls = torch.save, {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 checkpoint: the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", flaky_save)
    summary = trainer.run()
    out = capsys.readouterr().out
    assert "warning: checkpoint at step 4 not written (No space left on device)" in out
    assert summary["faults"]["checkpoint_failures"] == 1 and summary["steps"] == 12
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")]
    assert names == ["step_00000008.pt", "step_00000012.pt"]  # retried at the next interval
    assert not any(p.name.startswith(".") for p in checkpoint.checkpoint_dir(tmp_path / "run").iterdir())


def test_failed_write_never_replaces_the_good_checkpoint(tmp_path, monkeypatch):
    good = checkpoint.save({"x": torch.arange(3)}, tmp_path, step=5, keep=3)
    before = good.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError):
        checkpoint.save({"x": torch.arange(4)}, tmp_path, step=5, keep=3)  # same name
    assert good.read_bytes() == before
    assert torch.equal(checkpoint.load(good)["x"], torch.arange(3))


def test_damaged_newest_checkpoint_falls_back_to_older(tmp_path, capsys):
    checkpoint.save({"v": 1}, tmp_path, step=1, keep=5)
    newest = checkpoint.save({"v": 2}, tmp_path, step=2, keep=5)
    newest.write_bytes(newest.read_bytes()[:20])  # truncated by a broken disk
    assert checkpoint.load_latest(tmp_path, warn=print)["v"] == 1
    assert "trying an older checkpoint" in capsys.readouterr().out


def step_3_fails_to_read_once(tmp_path, monkeypatch) -> None:
    """Checkpoints of steps 1 and 3; the next read, step 3's, fails (as it can for a passing
    reason: memory, a network disk)."""
    checkpoint.save({"v": 1}, tmp_path, step=1, keep=2)
    checkpoint.save({"v": 3}, tmp_path, step=3, keep=2)
    real_load = torch.load

    def out_of_memory_once(path, *a, **k):
        monkeypatch.setattr(checkpoint.torch, "load", real_load)
        raise MemoryError()
    monkeypatch.setattr(checkpoint.torch, "load", out_of_memory_once)


def names(run_dir) -> list[str]:
    return [p.name for p in checkpoint.list_checkpoints(run_dir)]


def test_an_unreadable_newer_checkpoint_does_not_take_the_keep_slots(tmp_path, monkeypatch):
    """Resumed from step 1 past a step-3 checkpoint that did not read, with keep=2: the step-3
    file is set aside as unreadable (its read may have failed for a passing reason), and the
    checkpoints written next, before and after step 3, keep both slots."""
    step_3_fails_to_read_once(tmp_path, monkeypatch)
    assert checkpoint.resume_state(tmp_path, warn=lambda m: None)["v"] == 1
    aside = tmp_path / "checkpoints" / "step_00000003.pt.unreadable"
    assert names(tmp_path) == ["step_00000001.pt"] and checkpoint.load(aside)["v"] == 3
    for step in (2, 4, 5):
        checkpoint.save({"v": step}, tmp_path, step=step, keep=2)
    assert names(tmp_path) == ["step_00000004.pt", "step_00000005.pt"] and aside.exists()
    assert checkpoint.resume_state(tmp_path)["v"] == 5


@needs_fmnist
def test_a_run_with_no_readable_checkpoint_is_not_started_over(tmp_path, capsys, monkeypatch):
    """Every checkpoint fails to read (a network disk away): the rerun stops, exit 2, and
    leaves the run as it was for a retry: checkpoints in place, its summary kept."""
    args = ["train", "--budget", "2steps", "--out", str(tmp_path), "--set", "model.dim=32",
            "model.depth=1", "model.heads=2", "train.batch_size=32", "data.holdout=0.02"]
    assert main(args) == 0
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    def out_of_memory(*a, **k):
        raise MemoryError()
    monkeypatch.setattr(checkpoint.torch, "load", out_of_memory)
    capsys.readouterr()
    assert main(args[:2] + ["3steps"] + args[3:]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: no checkpoint in {tmp_path / 'checkpoints'} reads (see the "
                        f"warnings above); rerun if the cause may pass, or move them away to "
                        f"start the run over\n"), err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert (tmp_path / "summary.json").exists()


def test_a_checkpoint_a_rollback_went_back_past_does_not_take_the_keep_slot(tmp_path,
                                                                          monkeypatch):
    """A rollback (which reads without setting aside) went back to step 1 past a step-3
    checkpoint that did not read: with keep=1 the step-2 checkpoint written next is kept, and
    step 3 too, until the run writes step 3 again."""
    step_3_fails_to_read_once(tmp_path, monkeypatch)
    assert checkpoint.load_latest(tmp_path, warn=lambda m: None)["v"] == 1
    checkpoint.save({"v": 2}, tmp_path, step=2, keep=1)
    assert names(tmp_path) == ["step_00000002.pt", "step_00000003.pt"]
    checkpoint.save({"v": 4}, tmp_path, step=3, keep=1)
    assert names(tmp_path) == ["step_00000003.pt"] and checkpoint.load_latest(tmp_path)["v"] == 4


@needs_fmnist
def test_a_resumed_run_sets_a_damaged_newest_checkpoint_aside(tmp_path, capsys):
    cfg = ("train.budget=8steps", "checkpoint.every_steps=2", "checkpoint.keep=2")
    crash_at_step(tiny_config(*cfg), tmp_path, 5)
    newest = checkpoint.list_checkpoints(tmp_path)[-1]
    assert newest.name == "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    Trainer(tiny_config(*cfg), tmp_path).run()
    assert f"cannot read checkpoint {newest}" in capsys.readouterr().out
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [6, 8]
    assert newest.with_name(newest.name + ".unreadable").exists()


def test_keep_k_checkpoints(tmp_path):
    for step in range(1, 6):
        checkpoint.save({"s": step}, tmp_path, step=step, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == \
        ["step_00000004.pt", "step_00000005.pt"]


def test_an_unreadable_checkpoint_file_is_named(tmp_path, monkeypatch):
    path = checkpoint.save({"v": 1}, tmp_path, step=1, keep=1)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(checkpoint.torch, "load", denied)
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"^cannot read checkpoint {path}: permission denied$"):
        checkpoint.load(path)


def test_a_checkpoint_holds_and_restores_its_own_gpus_random_state(monkeypatch):
    """The CUDA random state saved is this rank's GPU's alone, and goes back to that GPU: a
    state per visible GPU would fail to restore where fewer are visible. An older checkpoint's
    per-GPU list gives this GPU's entry, or nothing where it held too few."""
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"state of {device}")
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((state, str(device))))
    rank = SimpleNamespace(rt=SimpleNamespace(cuda=True, device=torch.device("cuda", 1)))
    rng = TrainerState.rng_state(rank)
    assert rng["cuda"] == "state of cuda:1"
    TrainerState.set_rng_state(rank, rng)
    TrainerState.set_rng_state(rank, dict(rng, cuda=["gpu 0", "gpu 1", "gpu 2"]))
    TrainerState.set_rng_state(rank, dict(rng, cuda=["gpu 0"]))
    assert restored == [("state of cuda:1", "cuda:1"), ("gpu 1", "cuda:1")]
