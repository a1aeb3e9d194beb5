"""What a run shows while it trains: the header, the progress bar on a terminal, the lines
a log file gets instead, the evaluations said as they come, the stop line."""
import fcntl
import io
import os
import pty
import re
import signal
import struct
import sys
import termios

from budgetvit.train import Trainer, train

from .conftest import needs_fmnist, quick, records

pytestmark = needs_fmnist


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_shows_the_header_then_the_bar_then_the_summary(tmp_path, monkeypatch):
    """stdout and stderr on one terminal: the header is not written onto the bar's line, the
    bar's text starts clean, and it ends at 100% ("done") above the summary, not redrawn below
    it saying time is left."""
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    train(quick("train.budget=12steps", "train.log_every=4"), tmp_path)
    lines = re.split(r"[\r\n]+", term.getvalue())
    bars = [i for i, line in enumerate(lines) if "%|" in line]
    header = next(i for i, line in enumerate(lines) if line.startswith("training "))
    summary = next(i for i, line in enumerate(lines) if line.startswith("== fmnist"))
    assert header < bars[0] and bars[-1] < summary
    assert lines[bars[-1]].startswith("100%|") and lines[bars[-1]].rstrip().endswith(" done")
    assert "px " in lines[bars[-2]] and not any("| ," in lines[i] for i in bars)


def test_evaluations_during_training_are_said_as_they_come(tmp_path, capsys):
    """Each evaluation before the final one gets a line (the final one is the summary's)."""
    s = train(quick("train.budget=3steps", "train.eval_every_s=1e-9"), tmp_path)
    said = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("evaluation at step ")]
    during = records(tmp_path / "eval.jsonl")[:-1]
    assert len(during) >= 2 and len(said) == len(during)
    for line, e in zip(said, during):
        assert re.fullmatch(rf"evaluation at step {e['step']} \(0m\d\ds of training, 28px, "
                            rf"{re.escape(s['eval_split'])}\): top-1 {e['top1']:.2f}%, "
                            rf"top-5 {e['top5']:.2f}%", line), line


def test_a_stopped_run_on_a_terminal_ends_with_its_stop_line(tmp_path, monkeypatch):
    """The bar stays where the run stopped, and the line saying how to resume is the last one
    (tqdm drew the bar again below it, still giving the time left)."""
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    trainer = Trainer(quick("train.budget=40steps", "train.log_every=4"), tmp_path,
                      command="budgetvit train")
    real_step = trainer.step

    def step(*args, **kw):
        if trainer.clock.steps == 10:
            trainer._on_signal(signal.SIGTERM, None)
        return real_step(*args, **kw)
    trainer.step = step
    assert trainer.run()["interrupted"]
    lines = [line for line in re.split(r"[\r\n]+", term.getvalue()) if line.strip()]
    assert lines[-1].startswith("stopped by SIGTERM at step 11 ")
    assert lines[-2].startswith(" 28%|") and " left 29 steps " in lines[-2]  # (its step 11)


def test_the_bar_moves_between_log_lines(tmp_path, monkeypatch):
    """log_every can be 100 steps (the imagenet presets): the bar still moves at every sync
    point, with the budget left, and the figures of the latest log line once there is one."""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train(quick("train.budget=12steps", "train.log_every=8"), tmp_path)
    bars = [line.rstrip() for line in re.split(r"[\r\n]+", term.getvalue()) if "%|" in line]
    assert " 8%|" in bars[1] and bars[1].endswith("| left 11 steps")  # (no log line yet)
    after = next(line for line in bars if line.startswith(" 75%|"))  # step 9: step 8's figures
    assert re.search(r"\| 28px \d+ img/s loss \S+ lr \S+ left 3 steps \(~0m\d\ds\)$", after)


def test_a_terminal_of_no_width_gets_the_lines_not_an_empty_bar(tmp_path, monkeypatch, capsys):
    """A terminal that says it has 0 columns (`script` without a size) shows a bar as nothing
    at all: such a run prints the lines a log file gets."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        train(quick("train.budget=12steps", "train.log_every=4"), tmp_path)
    os.close(master)
    assert "\n[100.0%] step 12 28px " in capsys.readouterr().out


def test_lines_for_a_log_file_end_at_100_percent_above_the_summary(tmp_path, capsys):
    """Output that is no terminal gets a line every 5% of the budget (at a log step), and a
    last one at 100% ("done") with the figures of the steps since the last log step (not
    that step's again), before the final evaluation, as the bar ends; also where the last
    step is a log step (its line is the "done" one, not one more)."""
    s = train(quick("train.budget=14steps", "train.log_every=4"), tmp_path / "a")
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert progress[-2].startswith("[ 85.7%] step 12 28px ")
    assert re.search(r" left 2 steps \(~0m\d\ds\)$", progress[-2])  # (at the rate so far)
    assert re.fullmatch(r"\[100\.0%\] step 14 28px \d+ img/s loss \S+ lr \S+ done",
                        progress[-1])
    assert progress[-1].endswith(f" lr {s['final_lr']:.2e} done")
    figures = [re.search(r"img/s loss (\S+) lr (\S+)", line).groups() for line in progress[-2:]]
    assert figures[0] != figures[1]  # (not the last log line's again)
    evaluation = next(i for i, line in enumerate(lines) if line.startswith("final evaluation"))
    ema = " (weights and EMA)" if "top1_ema" in s else ""
    assert lines[evaluation] == f"final evaluation at 28px on {s['eval_split']}{ema} ..."
    assert lines.index(progress[-1]) < evaluation < next(i for i, line in enumerate(lines)
                                                         if line.startswith("== fmnist"))
    # The summary: epochs per stage (what the paper rule counts), images scored.
    images = s["images_seen"] / s["epochs"]  # (the training images)
    assert [st["epochs"] for st in s["stages"]] == [st["images"] / images for st in s["stages"]]
    assert re.search(rf"28px \d+m\d\ds {s['stages'][-1]['epochs']:.2f} ep", "\n".join(lines))
    scored = s["evals"][-1]["eval_images"]  # (a holdout's description has the count: once)
    assert f" {scored} images" in s["eval_split"] and f"(at 28px on {s['eval_split']})" in lines[-2]
    train(quick("train.budget=12steps", "train.log_every=4"), tmp_path / "b")
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert progress[-2].startswith("[ 66.7%] step 8 ")
    assert re.fullmatch(r"\[100\.0%\] step 12 28px \d+ img/s loss \S+ lr \S+ done",
                        progress[-1])
    # A larger budget on a finished run's folder, with no log step left before its end: the
    # line has the figures of the two steps it trained.
    train(quick("train.budget=8steps", "train.log_every=4"), tmp_path / "c")
    train(quick("train.budget=10steps", "train.log_every=4"), tmp_path / "c")
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert re.fullmatch(r"\[100\.0%\] step 10 28px \d+ img/s loss \S+ lr \S+ done",
                        progress[-1])


def test_header_says_precision_and_a_plan_that_stops_short_of_the_final_size(tmp_path, capsys):
    """The paper rule's epochs per size can outlast a budget: the plan stops at the size being
    trained, the evaluation is still at the final size, and the header says so."""
    train(quick("train.budget=8steps", "curriculum.mode=paper", "curriculum.every_epochs=0.02",
                "curriculum.start_size_px=16", "curriculum.step_px=4"), tmp_path / "short")
    lines = capsys.readouterr().out.splitlines()
    assert ", fp32, eager, world 1, budget 8 steps" in lines[0]
    assert lines[1].startswith("curriculum: 16px@0%; ")
    assert lines[2] == ("note: the plan ends at 16px, short of curriculum.final_size_px=28, "
                        "where the model is evaluated; lower curriculum.every_epochs or give a "
                        "larger budget to reach it")
    # Resumed, it keeps its curriculum: only a larger budget reaches the final size.
    train(quick("train.budget=10steps", "curriculum.mode=paper", "curriculum.every_epochs=0.02",
                "curriculum.start_size_px=16", "curriculum.step_px=4"), tmp_path / "short")
    assert ("\nnote: the plan ends at 16px, short of curriculum.final_size_px=28, where the model "
            "is evaluated; give a larger budget to reach it\n") in capsys.readouterr().out
    train(quick("train.budget=8steps"), tmp_path / "whole")
    assert "note: the plan ends" not in capsys.readouterr().out
