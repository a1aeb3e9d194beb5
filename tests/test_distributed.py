"""The same trainer under torchrun: 2 CPU processes with gloo on Fashion-MNIST."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from budgetvit import checkpoint

from .conftest import needs_fmnist, write_image_tree

pytestmark = [needs_fmnist, pytest.mark.slow]

TINY = ["train.device=cpu",  # also where there is a GPU: the CUDA tests ask for it
        "model.dim=32", "model.depth=2", "model.heads=2", "train.batch_size=64",
        "train.eval_batch_size=1000", "train.warmup_steps=1", "train.log_every=1",
        "curriculum.stages=16:0.5,28:0.5", "aug.crop_scale_min=0.5",
        "data.holdout=0.02"]  # (the end evaluates 1,200 held-out images, not the 10,000 of test)


def torchrun(nproc: int, out: Path, budget: str, *extra: str, env: dict | None = None,
             **popen):
    """budgetvit train under torchrun, through tests/ddp_faults.py: the plain CLI unless env
    switches a fault on."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "tests.ddp_faults", "train", "--budget", budget,
           "--out", str(out), "--set", *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=Path(__file__).parent.parent, **popen)


def finish(proc, timeout: float) -> str:
    """The output of a torchrun job once it ends. One still running after `timeout` seconds
    fails the test with the end of its output, after each worker has printed where it was
    stuck: a hang is then diagnosed from the test's log alone."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        workers = [pid for pid in (_worker_pid(proc.pid, rank) for rank in range(8)) if pid]
        for sig, pause in ((signal.SIGUSR1, 1), (signal.SIGKILL, 0)):
            for pid in workers:  # the stacks (ddp_faults.py), a rank at a time; then the end
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                time.sleep(pause)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        pytest.fail(f"torchrun still running after {timeout} s; its output ends:\n"
                    f"{output[-8000:]}")


def test_two_ranks_stop_together_and_evaluate_every_image_once(tmp_path):
    proc = torchrun(2, tmp_path / "ddp", "3s", "data.holdout=0")
    output = finish(proc, 300)
    assert proc.returncode == 0, output
    assert "Grad strides do not match" not in output  # the depthwise conv's weight layout
    finished = dict(re.findall(r"rank (\d)/2: finished at step (\d+),", output))
    assert set(finished) == {"0", "1"} and finished["0"] == finished["1"]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == int(finished["0"])
    assert all(e["eval_images"] == 10000 for e in summary["evals"])  # each image exactly once
    assert [s["img_size"] for s in summary["stages"]] == [16, 28]
    # Freed later, its reducer would destroy the gloo group holding the GIL: a rare deadlock
    # at exit (a gloo thread waits for the GIL to free a finished collective's tensors).
    # (True|False, not \w+: the ranks' lines can run into each other in the launcher's output)
    freed = re.findall(r"rank (\d): DDP freed before its process group: (True|False)", output)
    assert sorted(freed) == [("0", "True"), ("1", "True")], output[-2000:]


def test_ranks_share_one_paper_plan(tmp_path):
    """The paper's rule plans from throughput measured in warm-up; each rank measures its own,
    so the plan must come from one of them (rank 0) or the ranks train at different sizes."""
    proc = torchrun(2, tmp_path / "paper", "4s", "curriculum.mode=paper",
                    "curriculum.start_size_px=16", "curriculum.step_px=4",
                    "curriculum.every_epochs=0.02", "train.warmup_steps=3")
    output = finish(proc, 300)
    assert proc.returncode == 0, output
    plans = dict(re.findall(r"rank (\d)/2: finished at step \d+, plan (.+)", output))
    assert set(plans) == {"0", "1"} and plans["0"] == plans["1"]
    assert plans["0"].count("px to") == 4 and "0.000000" not in plans["0"]  # 16, 20, 24, 28 px

    # Resumed as if written by 1 process at far slower rates: both ranks time the sizes ahead
    # again, and rank 0's rates give both the same plan.
    path = checkpoint.list_checkpoints(tmp_path / "paper")[-1]
    state = checkpoint.load(path)
    state["world_size"], state["world_sizes"] = 1, [1]
    # (1000x: even on a machine 10x faster than this VM, 5 s is then inside the first size)
    state["seconds_per_epoch"] = {k: v * 1000 for k, v in state["seconds_per_epoch"].items()}
    checkpoint.save(state, tmp_path / "paper", checkpoint.step_of(path), keep=3)
    proc = torchrun(2, tmp_path / "paper", "5s", "curriculum.mode=paper",
                    "curriculum.start_size_px=16", "curriculum.step_px=4",
                    "curriculum.every_epochs=0.02", "train.warmup_steps=3")
    output = finish(proc, 300)
    assert proc.returncode == 0, output
    assert output.count("note: resumed at world size 2 (was 1)") == 1
    summary = json.loads((tmp_path / "paper" / "summary.json").read_text())
    assert summary["world_sizes"] == [1, 2] and summary["world_size"] == 2
    plans = dict(re.findall(r"rank (\d)/2: finished at step \d+, plan (.+)", output))
    assert set(plans) == {"0", "1"} and plans["0"] == plans["1"]


def test_ranks_agree_on_checkpoints_faults_and_the_end(tmp_path):
    """Decisions each rank takes must be the same on every rank, or one enters a collective
    the others never reach (a hang) or rolls back alone. Faults on rank 1 only (ddp_faults.py):
    its clock reads 0.5 s late (checkpoints due by time: decided on the shared clock); its fp16
    loss overflows at step 4 (a fault on every rank, though only its loss was infinite); SIGTERM
    reaches it after the last shared decision (the run finishes, as that decision said)."""
    out = tmp_path / "faults"
    proc = torchrun(2, out, "50steps", "train.precision=fp16", "checkpoint.every_s=0.3",
                    "checkpoint.every_steps=4",
                    env={"FAULT_CLOCK_SKEW_S": "0.5", "FAULT_OVERFLOW_STEP": "4",
                         "FAULT_LATE_SIGTERM": "1"})
    output = finish(proc, 240)
    assert proc.returncode == 0, output[-3000:]
    finished = dict(re.findall(r"rank (\d)/2: finished at step (\d+),", output))
    assert finished == {"0": "50", "1": "50"}, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faults"] == {"nonfinite_steps": 1, "rollbacks": 0, "checkpoint_failures": 0}
    assert summary["images_seen"] == 49 * 64
    assert "non-finite loss or gradient at step 4" in output


def test_loss_curve_matches_one_process_with_same_global_batch(tmp_path):
    """Same seed, same global batch of 64: 2 x 32 under DDP vs 1 x 64. The data and crops are
    the same by construction; only float summation order differs, so the first losses agree
    to 1e-3 relative."""
    runs = {}
    for nproc in (1, 2):
        proc = torchrun(nproc, tmp_path / f"w{nproc}", "8steps", "train.deterministic=true")
        output = finish(proc, 300)
        assert proc.returncode == 0, output
        runs[nproc] = [json.loads(line)["loss"] for line in
                       (tmp_path / f"w{nproc}" / "log.jsonl").read_text().splitlines()]
    assert len(runs[1]) == len(runs[2]) == 8
    for a, b in zip(runs[1], runs[2]):
        assert abs(a - b) <= 1e-3 * abs(a), (runs[1], runs[2])


def _worker_pid(launcher_pid: int, rank: int) -> int | None:
    """pid of the torchrun worker with RANK=rank, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == launcher_pid and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def newest_step(out: Path) -> int:
    try:
        return checkpoint.load(checkpoint.list_checkpoints(out)[-1])["clock"]["steps"]
    except (IndexError, checkpoint.CheckpointError):  # none yet, or just rotated away
        return -1


RESUMABLE = ("checkpoint.every_steps=5", "train.deterministic=true", "model.drop_path=0.1",
             "aug.mixup=0.2", "aug.random_erasing=0.25", "train.log_every=3")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """A 100-step run of 2 ranks, uninterrupted, checkpoints every 5 steps."""
    out = tmp_path_factory.mktemp("straight")
    proc = torchrun(2, out, "100steps", *RESUMABLE)
    output = finish(proc, 300)
    assert proc.returncode == 0, output
    return out


def test_a_killed_rank_stops_the_job_and_a_rerun_resumes_exactly(tmp_path, straight_run):
    """Kill rank 1 after the first checkpoint: the job stops, with a resumable checkpoint.
    Rerun: the final weights equal an uninterrupted run's. Drop path, mixup and random erasing
    draw from each rank's own random state, so rank 1's must be saved and restored too, not
    only rank 0's. So do the logged losses: a log line's mean over the steps since the one
    before covers every rank's steps, also those before the checkpoint (log lines every 3
    steps, checkpoints every 5)."""
    out = tmp_path / "resumed"
    proc = torchrun(2, out, "100steps", *RESUMABLE)
    deadline = time.time() + 120
    while newest_step(out) < 5 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    output = finish(proc, 180)  # bounded: a hang fails the test here
    assert proc.returncode != 0  # killed before the end
    assert "exitcode" in output.lower() or "lost contact" in output, output[-2000:]
    resumed_from = newest_step(out)
    assert resumed_from >= 5
    assert checkpoint.load(checkpoint.list_checkpoints(out)[-1])["world_size"] == 2
    proc = torchrun(2, out, "100steps", *RESUMABLE)
    output = finish(proc, 300)
    assert proc.returncode == 0 and resumed_from < 100, output
    a = checkpoint.load(checkpoint.list_checkpoints(straight_run)[-1])["model"]
    b = checkpoint.load(checkpoint.list_checkpoints(out)[-1])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed from step {resumed_from}"
    logs = [{r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").open())}
            for run in (straight_run, out)]
    assert logs[1] == pytest.approx(logs[0], rel=1e-12), f"resumed from step {resumed_from}"
    # Killed after its final checkpoint, before summary.json: the rerun writes it, and logs
    # no step twice. (The ranks agree on whether a log line is due: a collective.)
    (out / "summary.json").unlink()
    proc = torchrun(2, out, "100steps", *RESUMABLE)
    output = finish(proc, 120)
    assert proc.returncode == 0, output[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 100
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").open()]
    assert steps == sorted(set(steps)) and steps[-1] == 100


def test_a_fault_every_rank_finds_is_said_once(tmp_path):
    """Rank 0 says it; rank 1, silent, waits until torchrun stops it (exiting first, it could
    have torchrun stop rank 0 before rank 0 said it)."""
    proc = torchrun(2, tmp_path / "run", "4steps", "train.batch_size=63")
    output = finish(proc, 120)
    assert proc.returncode != 0
    assert output.count("error: train.batch_size=63 is not divisible by the world size 2") == 1


def test_a_rank_that_cannot_read_rank_0s_checkpoint_stops_the_job(tmp_path, straight_run):
    """Rank 1 fails to read the step-100 checkpoint rank 0 resumes from (for a larger budget):
    the job stops naming it, rather than rank 1 going on from step 95 with other weights than
    rank 0's."""
    shutil.copytree(straight_run, tmp_path / "run")
    proc = torchrun(2, tmp_path / "run", "110steps", *RESUMABLE,
                    env={"FAULT_UNREADABLE": "step_00000100.pt"})
    output = finish(proc, 300)
    assert proc.returncode != 0, output
    assert f"cannot read checkpoint {tmp_path / 'run' / 'checkpoints' / 'step_00000100.pt'}" \
        in output, output[-3000:]


def test_unreadable_images_are_counted_over_every_rank(tmp_path):
    """6 of 36 training images are empty files; 3 steps of 12 are an epoch, which meets each
    once, whichever rank's share of a batch holds it. The count goes on across a resume. Two
    empty val images, one in each rank's share: said once, with both counted."""
    root = write_image_tree(tmp_path / "tree")
    for path in sorted((root / "train").rglob("*.jpg"))[::6]:
        path.write_bytes(b"")
    val = sorted((root / "val").rglob("*.jpg"))  # (the split's order: rank r has r, r + 2...)
    for path in val[:2]:
        path.write_bytes(b"")
    data = ("data.dataset=imagefolder", f"data.path={root}", "data.holdout=0",
            "data.num_workers=0", "train.batch_size=12")
    for budget, bad in (("3steps", 6), ("6steps", 12)):  # the second resumes the first
        proc = torchrun(2, tmp_path / "run", budget, *data)
        output = finish(proc, 300)
        assert proc.returncode == 0, output
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["bad_images"] == bad
        assert [line for line in output.splitlines() if "split left out" in line] == [
            f"warning: 2 unreadable images in the evaluation split left out ({val[0]} and "
            f"others)"], output[-3000:]


def test_bench_runs_each_arm_under_torchrun(tmp_path):
    from budgetvit.cli import main
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "fmnist", "--budget", "4steps", "--arms", "vit+local",
                 "--seeds", "1", "--nproc-per-node", "2", "--out", str(out), "--set", *TINY]) == 0
    summary = json.loads((out / "vit+local" / "seed0" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["vit+local"]["n"] == 1
