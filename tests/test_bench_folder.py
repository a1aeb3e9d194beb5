"""What a bench folder holds and refuses: runs it did not start, a second bench in it, more
processes than a named benchmark allows, runs in several environments, failed runs, a reader that
went away; and the plan's per-arm details (evaluation interval, torchrun commands)."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from budgetvit import bench, report
from budgetvit.cli import main
from budgetvit.config import ConfigError
from budgetvit.folder_lock import folder_lock

from .test_bench_report import bench_args, fake_run

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"cpu_cores_visible": 1, "gpus": []}


def finished_child(head, argv, run_dir, env, nproc):
    if not (run_dir / "summary.json").exists():
        fake_run(run_dir, 50.0)
    return "ok"


def test_each_arm_is_evaluated_every_fifth_of_its_own_budget(tmp_path):
    args = bench_args(preset="fmnist", budget="1m", seeds="1", out=str(tmp_path),
                      arm=["long: train.budget=2h", "short: train.budget=10s", "steps: "
                           "train.budget=50steps", "base:"])
    _, _, base, chosen, _, common = bench.plan(args)
    every = {}
    for arm in chosen:
        argv = bench.train_argv(base, arm, 0, tmp_path / arm.name, common)
        every[arm.name] = [x for x in argv if x.startswith("train.eval_every_s=")]
    assert every == {"long": ["train.eval_every_s=1440"], "short": ["train.eval_every_s=2"],
                     "steps": [], "base": ["train.eval_every_s=12"]}


def test_a_named_benchmark_refuses_more_processes_than_it_allows():
    with pytest.raises(ConfigError, match="--nproc-per-node 2: benchmark fmnist-cpu-1m allows 1"):
        bench.plan(bench_args(benchmark="fmnist-cpu-1m", nproc_per_node=2))
    s = {"top1": 1.0, "world_size": 2}
    assert bench._violations(0, s, bench.BENCHMARKS["fmnist-cpu-1m"]) == [
        "seed0: 2 processes; the benchmark allows 1"]
    assert bench._violations(0, {**s, "world_size": 1}, bench.BENCHMARKS["fmnist-cpu-1m"]) == []
    # Most of a run on 2 processes, its end on 1 (resumed there): still 2
    resumed = {**s, "world_size": 1, "world_sizes": [2, 1]}
    assert bench._violations(0, resumed, bench.BENCHMARKS["fmnist-cpu-1m"]) == [
        "seed0: 2 processes; the benchmark allows 1"]


def test_torchrun_runs_are_printed_and_recorded_as_what_runs(tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["bench", "--preset", "fmnist", "--budget", "6steps", "--arms", "vit", "--seeds",
            "1", "--out", str(out), "--nproc-per-node", "2"]
    assert main([*argv, "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("torchrun --standalone --nproc_per_node=2 -m budgetvit train ")
    # A record of that form is the same run as its argv (a rerun resumes it).
    _, _, base, (arm,), _, common = bench.plan(bench_args(preset="fmnist", budget="6steps",
                                                           arms="vit", seeds="1"))
    run_argv = bench.train_argv(base, arm, 0, out / "vit" / "seed0", common)
    assert bench._same_arm(line, run_argv)
    assert not bench._same_arm(line.replace("train.seed=0", "optim.lr=1 train.seed=0"),
                               run_argv)


def test_a_bench_recorded_before_per_arm_evaluation_intervals_resumes(tmp_path):
    """Earlier versions gave every arm the base budget's interval: such a record is still the
    same run (the interval is the bench's own, and changes no training)."""
    args = bench_args(preset="fmnist", budget="1m", seeds="1", arm=["long: train.budget=2m"])
    _, _, base, (arm,), _, common = bench.plan(args)
    argv = bench.train_argv(base, arm, 0, tmp_path / "long" / "seed0", common)
    assert "train.eval_every_s=24" in argv
    assert bench._same_arm(bench._shell(argv).replace("eval_every_s=24", "eval_every_s=12"),
                           argv)


def test_a_run_the_bench_did_not_start_is_refused(tmp_path, monkeypatch):
    """A `budgetvit train` of one's own in a bench's run folder: no record says which command
    made it, so it is neither skipped as done (and pooled) nor resumed."""
    monkeypatch.setattr(bench, "environment", lambda: MACHINE)
    out = tmp_path / "b"
    fake_run(out / "vit" / "seed0", 99.0)
    args = bench_args(preset="fmnist", budget="6steps", arms="vit", seeds="2", out=str(out))
    with pytest.raises(ConfigError, match=r"b/vit/seed0 holds a run this bench did not start"):
        bench.run(args)
    assert not (out / "results.json").exists()


def test_a_bench_of_other_settings_is_refused_naming_only_what_differs(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr(bench, "environment", lambda: MACHINE)
    monkeypatch.setattr(bench, "_run_one", finished_child)
    out = tmp_path / "b"
    argv = ["bench", "--preset", "fmnist", "--budget", "12steps", "--arms", "vit", "--seeds", "1",
            "--out", str(out), "--set", "optim.lr=1e-3", "data.holdout=0.1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv[:4], "14steps", *argv[5:-1]]) == 2  # another budget, no holdout
    assert capsys.readouterr().err == (
        f"error: {out} holds a bench with other settings (budget 12steps -> 14steps, set "
        f"optim.lr=1e-3 data.holdout=0.1 -> optim.lr=1e-3); use another --out, or those "
        f"settings\n")
    assert main(["bench", "--benchmark", "fmnist-cpu-1m", "--arms", "vit", "--seeds", "1",
                 "--out", str(out), "--nproc-per-node", "1"]) == 2
    assert capsys.readouterr().err == (
        f"error: {out} holds a bench with other settings (benchmark custom -> fmnist-cpu-1m, "
        f"budget 12steps -> 1m, set optim.lr=1e-3 data.holdout=0.1 -> train.device=cpu); use "
        f"another --out, or those settings\n")


HOLD = """
import sys, time
from pathlib import Path
from budgetvit.folder_lock import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(folder: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process holding the folder's lock, as a live bench or run does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_folder_in_use_is_refused_by_bench_and_train(tmp_path, capsys):
    out = tmp_path / "b"
    proc = holder(out)
    try:
        assert main(["bench", "--preset", "fmnist", "--budget", "6steps", "--arms", "vit",
                     "--seeds", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: --out {out} is in use by another budgetvit run or bench (pid " \
            f"{proc.pid} on {socket.gethostname()})" in err and not (out / "bench.json").exists()
        assert main(["train", "--budget", "2steps", "--out", str(out)]) == 2
        assert f"--out {out} is in use" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(out):  # free once its holder is gone, however it ended
        # This process's own hold refuses it too (a record lock would not).
        assert main(["train", "--budget", "2steps", "--out", str(out)]) == 2
        assert f"(pid {os.getpid()}, this process)" in capsys.readouterr().err
        assert (out / ".lock").exists()
    assert not (out / ".lock").exists()  # let go: a finished folder keeps no lock file


FORK_AND_HOLD = """
import os, sys, time
from pathlib import Path
from budgetvit.folder_lock import folder_lock
with folder_lock(Path(sys.argv[1])):
    child = os.fork()
    if child == 0:  # a loader worker, say
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
"""


def test_a_killed_holders_forked_processes_do_not_hold_the_lock(tmp_path):
    """Loader workers are forked and outlive a SIGKILLed trainer (which removes nothing) by a
    few seconds: a rerun must not be refused meanwhile."""
    proc = subprocess.Popen([sys.executable, "-c", FORK_AND_HOLD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    try:
        assert (tmp_path / ".lock").exists()  # left behind, as a kill leaves it
        holder(tmp_path, 0).wait(timeout=60)  # another process takes it
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_train_refused_in_a_new_folder_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main(["train", "--budget", "2steps", "--out", str(out),
                 "--set", "train.batch_size=100000"]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_results_name_every_environment_a_run_ran_in_and_every_failed_run(tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "b"
    common = dict(preset="fmnist", budget="6steps", out=str(out))
    monkeypatch.setattr(bench, "_run_one", finished_child)
    # Seed 0 on an A100, seed 1 on an H100; the calls after them run nothing new.
    for gpu, seeds in (("A100", "1"), ("H100", "2"), ("A100", "2"), ("H200", "2")):
        monkeypatch.setattr(bench, "environment", lambda: {"cpu_cores_visible": 1, "gpus": [gpu]})
        assert bench.run(bench_args(arms="vit", seeds=seeds, **common)) == 0
    results = json.loads((out / "results.json").read_text())
    assert [e["gpus"] for e in results["environments"]] == [["A100"], ["H100"]]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "ran in several environments:\n- cpu_cores_visible 1; gpus A100\n- " \
        "cpu_cores_visible 1; gpus H100\n" in md

    monkeypatch.setattr(bench, "_run_one", lambda head, argv, run_dir, *a: (
        "failed" if "vit+local" in str(run_dir) else finished_child(head, argv, run_dir, *a)))
    assert bench.run(bench_args(arms="vit,vit+local,vit", seeds="1", **common)) == 1
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "Failed runs (no summary.json; see each one's train.log): vit+local/seed0" in md
    assert json.loads((out / "bench.json").read_text())["arms"] == ["vit", "vit+local"]


DRIVER = """
import sys
from budgetvit import bench
from budgetvit.cli import main
from tests.test_bench_report import fake_run

def child(argv, run_dir, env, nproc):
    fake_run(run_dir, 50.0)
    return 0, False
bench._train = child
bench.environment = lambda: {"cpu_cores_visible": 1, "gpus": []}
sys.exit(main(sys.argv[1:]))
"""


def test_a_bench_whose_output_reader_is_gone_runs_to_its_results(tmp_path):
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "bench", "--preset", "fmnist",
                             "--budget", "6steps", "--arms", "vit,vit+local", "--seeds", "2",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -1` does once it has its line
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    results = json.loads((out / "results.json").read_text())
    assert [results["arms"][a]["n"] for a in ("vit", "vit+local")] == [2, 2]


def test_report_reads_each_folder_once_and_names_a_damaged_summary(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs / "a", 50.0)
    os.symlink(runs, runs / "loop")  # a link back up
    assert report.discover([runs, runs / "a"]) == [runs / "a"]
    (runs / "a" / "summary.json").write_text('{"top1": ')
    assert main(["report", str(runs)]) == 2
    assert f"error: {runs / 'a' / 'summary.json'} is not valid JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_an_arm_with_a_missing_data_path_is_refused_before_any_run():
    with pytest.raises(ConfigError, match="arm x: data.path: /nope does not exist"):
        bench.plan(bench_args(preset="fmnist", budget="6steps", arm=["x: data.path=/nope"]))
