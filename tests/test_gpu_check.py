"""scripts/gpu_check.sh and its summary, as far as a machine without a GPU can run them: the
deadline, the stop without CUDA, and the table read from logs (made up here in the formats
`speed`, pytest and the trainer write)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEED = """\
device NVIDIA H200, vit_s16_local, batch 1024, bf16 autocast, compile on (blocks, default), median of 3 x 5 steps
 size     img/s    MFU  mem GiB warm-up s  timm img/s  ratio
   64   50000.0  40.0%     5.00      20.0     30000.0   1.67
  224   12000.0  45.0%    30.00      25.0      8000.0   1.50
device NVIDIA H200, vit_s16_local, batch 1024, bf16 autocast, compile on (blocks, reduce-overhead), median of 3 x 5 steps
 size     img/s    MFU  mem GiB warm-up s
   64   60000.0  48.0%     5.00      30.0
"""


def summary_of(log: Path) -> list[str]:
    out = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_summary.py"), str(log)],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def row(lines: list[str], label: str) -> str:
    return next(line[33:] for line in lines if line.startswith(label))


def test_summary_reads_every_log(tmp_path):
    (tmp_path / "check.txt").write_text("NVIDIA H200, 570.1, 143771 MiB\ntorch 2.11.0\n")
    (tmp_path / "speed.txt").write_text(SPEED)
    (tmp_path / "cuda_tests.txt").write_text(
        "....s\nSKIPPED [1] tests/test_dali.py:122: needs a CUDA GPU and DALI\n"
        "4 passed, 1 skipped, 30 deselected in 80.1s\n")
    (tmp_path / "fmnist_summary.json").write_text(json.dumps({
        "top1": 88.1, "budget_s": 120.0, "train_time_s": 120.02, "overrun_s": 0.02, "warmup_time_s": 14.0,
        "images_seen": 9_000_000, "stages": [{"img_size": 16}, {"img_size": 28}],
        "device": "NVIDIA H200"}))
    (tmp_path / "fmnist_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "mfu": m}) + "\n" for s, m in [(1, .1), (2, .3), (3, .2)]))
    (tmp_path / "warmup.txt").write_text(
        "warm-up 32px: compiled and ran 4 steps in 20.1s (not charged)\n"
        "warm-up 64px: compiled and ran 4 steps in 19.0s (not charged)\n")
    (tmp_path / "warmup_summary.json").write_text(json.dumps({
        "warmup_time_s": 39.1, "config": {"train": {"batch_size": 1024}}}))
    lines = summary_of(tmp_path)
    assert lines[1] == "== budgetvit GPU check: NVIDIA H200, 570.1, 143771 MiB"
    assert row(lines, "  224 px") == ("12000.0 img/s, MFU 45.0%, 30.00 GiB, warm-up 25.0 s; "
                                      "timm 8000.0 img/s, ratio 1.50")
    assert row(lines, "  64 px / 224 px") == "4.17x"
    assert row(lines, "  64 px, blocks, reduce-overhead") == (
        "60000.0 img/s, MFU 48.0%, warm-up 30.0 s (default: 50000.0 img/s)")
    assert row(lines, "CUDA tests") == "4 passed, 1 skipped, 30 deselected in 80.1s"
    assert any("SKIPPED [1] tests/test_dali.py:122" in line for line in lines)
    assert row(lines, "fmnist run").startswith(
        "120s budget, top-1 88.10%, trained 120.0s, overrun +0.02s")
    assert row(lines, "  MFU in its log.jsonl") == "median 20.0% of 3 records"
    assert row(lines, "imagenet preset warm-up") == (
        "39.1s for 32px, 64px (cold caches; target <= 180s), batch 1024")


def test_a_warning_before_the_speed_tables_header_is_no_table(tmp_path):
    """speed.txt holds stderr too: a library's warning printed before the header."""
    (tmp_path / "speed.txt").write_text("FutureWarning: pynvml is deprecated\n  import pynvml\n"
                                        + SPEED)
    lines = summary_of(tmp_path)
    assert row(lines, "speed table").startswith("device NVIDIA H200")
    assert row(lines, "  64 px / 224 px") == "4.17x"
    assert row(lines, "  64 px, blocks, reduce-overhead").endswith("(default: 50000.0 img/s)")


def test_summary_says_what_is_missing(tmp_path):
    (tmp_path / "cuda_tests.txt").write_text("....\nTimeout\n")  # cut before pytest's last line
    (tmp_path / "fmnist_summary.json").write_text(json.dumps({  # a step budget: no overrun
        "top1": 50.0, "budget_s": None, "train_time_s": 3.0, "overrun_s": None, "warmup_time_s": 1.0,
        "images_seen": 640, "stages": [{"img_size": 28}], "device": "cpu"}))
    lines = summary_of(tmp_path)
    assert row(lines, "speed table") == "MISSING; last line: no speed table"
    assert row(lines, "CUDA tests") == "NO RESULT LINE; last line: Timeout"
    assert row(lines, "fmnist run").startswith("top-1 50.00%, trained 3.0s, warm-up 1.0s")
    assert row(lines, "imagenet preset warm-up") == "MISSING; see warmup.txt"
    # The warm-up cut by the deadline after two of its sizes: what those took.
    (tmp_path / "warmup.txt").write_text(
        "warm-up 32px: compiled and ran 4 steps in 20.1s (not charged)\n"
        "warm-up 64px: compiled and ran 4 steps in 19.0s (not charged)\nTraceback\n")
    assert row(summary_of(tmp_path), "imagenet preset warm-up") == (
        "CUT SHORT after 32px, 64px: 39.1s for those (cold caches; target <= 180s for all 7); "
        "see warmup.txt")


def test_summary_keeps_the_variants_when_the_speed_table_failed(tmp_path):
    """Step 2 failed before its first row: its own error is the missing table's last line,
    and the variants that ran are still shown (without a default to compare with)."""
    header, _, _, _, variant_header, variant_cols, variant_row = SPEED.splitlines()
    (tmp_path / "speed.txt").write_text("\n".join([
        header, "error: --compare-timm needs timm", variant_header, variant_cols, variant_row]))
    lines = summary_of(tmp_path)
    assert row(lines, "speed table") == "MISSING; last line: error: --compare-timm needs timm"
    assert row(lines, "  64 px, blocks, reduce-overhead") == (
        "60000.0 img/s, MFU 48.0%, warm-up 30.0 s (no default row)")
    assert not any(" px / " in line for line in lines)
    # Failed before its header: that error, not the variant's table, is what is missing.
    (tmp_path / "speed.txt").write_text("\n".join([
        "Traceback", "ValueError: bad", variant_header, variant_cols, variant_row]))
    assert row(summary_of(tmp_path), "speed table") == "MISSING; last line: ValueError: bad"
    # Step 2 skipped by the deadline: the variant is not taken for the speed table.
    (tmp_path / "speed.txt").write_text("\n".join([variant_header, variant_cols, variant_row]))
    lines = summary_of(tmp_path)
    assert row(lines, "speed table") == "MISSING; last line: no speed table"
    assert row(lines, "  64 px, blocks, reduce-overhead").endswith("(no default row)")


def stand_in_python(path: Path, *rules: str, versions: str = "torch (stand-in)") -> str:
    """A python for the script that answers its versions line with `versions` (importing
    torch, torchvision and timm takes 7 s here) and does what `rules` (bash lines) say,
    running everything else with this Python."""
    path.write_text("#!/bin/bash\n" + "".join(rule + "\n" for rule in rules) +
                    f'if [[ "$2" == *timm.__version__* ]]; then echo "{versions}"; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
    path.chmod(0o755)
    return str(path)


def run_check(log: Path, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(log)],
                          env={**os.environ, "PYTHON": sys.executable, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, compile_", [
    ({}, "auto"),
    ({"CC": "/nonexistent/cc"}, "off"),  # no C compiler
    ({"FAKE_PYTHON_H": ""}, "off"),  # no Python.h
    ({"COMPILE": "off"}, "off"),
    ({"FAKE_PROBE": "compile fails: InvalidCxxCompiler: ..."}, "off"),
    ({"FAKE_PROBE": "compile works with TRITON_LIBCUDA_PATH=/drv"}, "auto"),
])
def test_every_step_runs_with_the_checks_compile_setting(tmp_path, env, compile_):
    """Each step's command, recorded by a stand-in python: all of them with one compile
    setting (off where torch.compile could not build, its probe failed, or COMPILE=off), and
    without compile no compile variants; TRITON_LIBCUDA_PATH where the probe needed it."""
    # Records `python -m ...` commands instead of running them, an argument a line; answers
    # the Python.h probe with $FAKE_PYTHON_H and the compile probe with $FAKE_PROBE.
    fake = stand_in_python(
        tmp_path / "python",
        f'if [ "$1" = -m ]; then printf "%s\\n" "$@" '
        f'"TRITON_LIBCUDA_PATH=$TRITON_LIBCUDA_PATH" --- >> {tmp_path}/commands; exit 0; fi',
        'if [[ "$2" == *Python.h* ]]; then echo "$FAKE_PYTHON_H"; exit 0; fi',
        'if [[ "$1" == *compile_probe.py ]]; then echo "$FAKE_PROBE"; exit 0; fi')
    fmnist = tmp_path / "fmnist"
    fmnist.mkdir()
    (fmnist / "train-images-idx3-ubyte.gz").touch()
    run_check(tmp_path / "log", **{"PYTHON": fake, "REQUIRE_CUDA": "0", "DEVICE": "cpu",
                                   "BUDGETVIT_FMNIST_DIR": str(fmnist), "CC": "/bin/true",
                                   "FAKE_PYTHON_H": "/usr/include/Python.h",
                                   "FAKE_PROBE": "compile works", "TRITON_LIBCUDA_PATH": "",
                                   **env})
    commands = [c.strip("\n").split("\n")
                for c in (tmp_path / "commands").read_text().split("---\n")[:-1]]
    after = lambda c, option: c[c.index(option) + 1]  # noqa: E731 (the option's value)
    trains = [c for c in commands if c[:3] == ["-m", "budgetvit", "train"]]
    speeds = [c for c in commands if c[:3] == ["-m", "budgetvit", "speed"]]
    assert len(trains) == 2 and all(f"train.compile={compile_}" in c for c in trains)
    assert all(after(c, "--compile") == compile_ for c in speeds)
    tests = [c for c in commands if c[:2] == ["-m", "pytest"]]
    marks = "cuda" if compile_ == "auto" else "cuda and not compile"  # (one argument)
    assert len(tests) == 1 and tests[0][:7] == ["-m", "pytest", "-q", "-rs", "-m", marks,
                                                "tests/test_cuda.py"]
    eager = "compile off: warm-up, speed and training run eager; no compile tests or variants"
    check = (tmp_path / "log/check.txt").read_text()
    libcuda = "/drv" if "TRITON_LIBCUDA_PATH" in env.get("FAKE_PROBE", "") else ""
    assert all(c[-1] == f"TRITON_LIBCUDA_PATH={libcuda}" for c in commands)
    if "FAKE_PROBE" in env:
        assert f"compile probe: {env['FAKE_PROBE']}\n" in check
    if compile_ == "off":
        assert len(speeds) == 1 and eager in check
    else:
        assert len(speeds) == 3 and after(speeds[1], "--compile-mode") == "reduce-overhead"
        assert after(speeds[2], "--compile-scope") == "model"
        assert "C compiler: /bin/true\nPython.h: /usr/include/Python.h\n" in check


def test_compile_probe_says_why_compiling_fails(tmp_path):
    """(Inductor without a working C++ compiler, on the CPU; a fresh cache, which a cached
    kernel would not need the compiler for)"""
    done = subprocess.run([sys.executable, str(ROOT / "scripts/compile_probe.py"), "cpu"],
                          env={**os.environ, "CXX": "/nonexistent/g++",
                               "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith(
        "compile fails: InvalidCxxCompiler: No working C++ compiler found")


def test_check_skips_the_steps_past_its_deadline_and_still_prints_the_table(tmp_path):
    # (TRAIN_S not a whole number of seconds: said, and the steps after it still reported)
    fmnist = tmp_path / "fmnist"  # (unpacked: the loader reads the IDX files with or without .gz)
    fmnist.mkdir()
    (fmnist / "train-images-idx3-ubyte").touch()
    done = run_check(tmp_path, REQUIRE_CUDA="0", DEVICE="cpu", DEADLINE_S="0", TRAIN_S="20s",
                     BUDGETVIT_FMNIST_DIR=str(fmnist),
                     PYTHON=stand_in_python(tmp_path / "python"))
    assert "TRAIN_S=20s: give whole seconds" in done.stderr
    check = (tmp_path / "check.txt").read_text()
    for name in ("0/5 compile probe", "1/5 imagenet-1gpu-24h warm-up", "2/5 speed table",
                 "3/5 CUDA tests", "4/5 fmnist training", "5/5 CUDA graphs",
                 "5/5 whole-model compile"):
        assert f"step {name}" in check and "skipped, " in check.split(f"step {name}")[1]
    assert "torch " in check and f"fashion-mnist: {fmnist}\n" in check
    assert "C compiler: " in check and "Python.h: " in check
    assert "== budgetvit GPU check:" in done.stdout
    assert "speed table                      MISSING" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_check_stops_at_once_without_a_gpu(tmp_path):
    done = run_check(Path("logs"), cwd=tmp_path)  # (relative: to where it is run from)
    assert done.returncode == 1
    assert "no CUDA GPU visible to PyTorch: stopping before any work" in done.stdout
    assert "torch " in (tmp_path / "logs" / "check.txt").read_text()
    assert not (tmp_path / "logs" / "speed.txt").exists()
    assert "== budgetvit GPU check:" in done.stdout  # the table is printed all the same


def test_check_stops_at_once_where_torch_does_not_import(tmp_path):
    done = run_check(tmp_path / "logs", PYTHON=stand_in_python(
        tmp_path / "python", versions="ModuleNotFoundError: No module named 'timm'"))
    assert done.returncode == 1
    assert "torch, torchvision or timm does not import (check.txt): stopping before any " \
        "work" in done.stdout
    assert "No module named 'timm'" in (tmp_path / "logs" / "check.txt").read_text()


def test_training_commands_need_no_plotting_library():
    """The GPU machine may lack matplotlib (only report and bench draw): with it hidden,
    `train --print-config` and `speed --help` still run, and `report` imports."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from budgetvit.cli import main\n"
            "assert main(['train', '--print-config']) == 0\n"
            "import budgetvit.report\n"
            "try:\n    main(['speed', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'matplotlib.figure' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    assert '"model"' in r.stdout and "--compare-timm" in r.stdout

