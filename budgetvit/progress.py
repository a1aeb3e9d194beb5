"""What a run tells the user and other tools while it trains: a progress bar (or periodic
lines when the output is not a terminal), RUN_DIR/log.jsonl, RUN_DIR/eval.jsonl and, when
tensorboard is installed, TensorBoard event files. Only rank 0 creates one. Also prepare's
progress lines in a log file."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def terminal_columns(stream) -> int:
    """The width of the terminal `stream` writes to; 0 where it is none, or says it has none
    (`script` without a size, some CI runners), where a bar would show nothing at all."""
    if not stream.isatty():
        return 0
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):  # a terminal that cannot be asked: tqdm's own default
        return 80


def replace_lines(path: Path, lines: list[str]) -> None:
    """Rewrite a log through a temporary file, so that a kill here loses nothing."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records of steps <= last_step (and drop a half-written last line): a run
    resumed from the checkpoint at last_step replays the steps after it, and must not log them
    twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    replace_lines(path, kept)


class ProgressLines:
    """Progress through a count of images (`prepare`'s) on stderr where that is no terminal:
    a line at each 5%, with the time left at the rate of this run so far."""

    def __init__(self, total: int, reused: int):
        self.total, self.reused, self.start = total, reused, time.monotonic()
        self.next = reused + total / 20

    def update(self, done: int) -> None:
        if done < self.next or not self.total:
            return
        rate = (done - self.reused) / max(time.monotonic() - self.start, 1e-9)
        print(f"prepare: {done:,} of {self.total:,} images ({100 * done / self.total:.0f}%), "
              f"{fmt_duration((self.total - done) / rate)} left", file=sys.stderr, flush=True)
        self.next = done + self.total / 20


class Progress:
    def __init__(self, run_dir: Path, budget: float, unit: str, start: float = 0.0,
                 last_step: int = -1, evals: list[dict] = ()):
        """last_step, evals: the step training goes on from and the evaluations made until
        then (rewind); a fresh run (-1, none) starts its logs anew."""
        self.run_dir, self.budget, self.unit = run_dir, budget, unit
        self.log_file = self.eval_file = self.tb = None
        self.rewind(last_step, evals)
        self.bar = None
        if terminal_columns(sys.stderr):  # (a terminal of 0 columns would show no bar at all)
            from tqdm import tqdm
            # The text in desc: tqdm puts ", " before a postfix.
            self.bar = tqdm(total=round(budget), initial=round(start), unit=unit[0],
                            dynamic_ncols=True, bar_format="{percentage:3.0f}%|{bar}| {desc}")
        self._next_line = start  # when the output is no terminal: a line every 5% of budget
        self._rec = None  # the latest log record
        self._state = ""  # its size, rate, loss and lr, as the bar shows them

    def rewind(self, last_step: int, evals: list[dict]) -> None:
        """Back to the checkpoint of last_step (a resume, a rollback): drop the log records of
        later steps (TensorBoard's too), and make eval.jsonl that checkpoint's evaluations,
        `evals` (not those of its step too: a final evaluation logged after it, by a run killed
        before the checkpoint that holds it, is made again)."""
        for f in (self.log_file, self.eval_file, self.tb):
            if f is not None:
                f.close()
        truncate_jsonl(self.run_dir / "log.jsonl", last_step)
        replace_lines(self.run_dir / "eval.jsonl", [json.dumps(rec) for rec in evals])
        self.log_file = open(self.run_dir / "log.jsonl", "a")
        self.eval_file = open(self.run_dir / "eval.jsonl", "a")
        try:  # TensorBoard hides the earlier event files' records of later steps
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=last_step + 1)
        except Exception:  # tensorboard not installed (or broken): the JSON logs suffice
            self.tb = None

    def update(self, spent: float, rec: dict) -> None:
        """spent: budget units used so far; rec: the latest log record."""
        self._rec, self._state = rec, self.figures(rec)
        if self.bar is not None:
            self.draw(spent)
        elif self._next_line <= spent < self.budget:  # (the 100% line is finish()'s)
            print(f"[{100 * spent / self.budget:5.1f}%] step {rec['step']} {self._state} left "
                  f"{self.left(spent)}", flush=True)
            self._next_line = spent + 0.05 * self.budget

    def tick(self, spent: float) -> None:
        """Between log records (log_every can be 100 steps, minutes on a slow GPU): the bar
        moves on with the budget spent, showing the latest record's figures."""
        if self.bar is not None and min(round(spent), self.bar.total) != self.bar.n:
            self.draw(spent)

    def draw(self, spent: float) -> None:
        self.bar.n = min(round(spent), self.bar.total)
        self.bar.set_description_str(f"{self._state} left {self.left(spent)}".lstrip(),
                                     refresh=True)

    def left(self, spent: float) -> str:
        """The budget left; for steps also the time, at the rate of the latest record."""
        left = max(0.0, self.budget - spent)
        if self.unit == "seconds":
            return fmt_duration(left)
        text = f"{left:.0f} step{'' if round(left) == 1 else 's'}"
        rec = self._rec
        if round(left) and rec and rec["step"]:
            text += f" (~{fmt_duration(left * rec['train_time_s'] / rec['step'])})"
        return text

    @staticmethod
    def figures(rec: dict) -> str:
        return (f"{rec['img_size']}px {rec['img_per_s']:.0f} img/s loss {rec['loss']:.3f} "
                f"lr {rec['lr']:.2e}")

    def finish(self, step: int, rec: dict | None) -> None:
        """The budget is spent, at `step`: the bar at 100% (the lines end with one at 100%),
        with rec, the figures of the steps since the last log record (None where there are
        none: the last record's stand). Said before the final evaluation, which takes a while."""
        if rec is not None:
            self._state = self.figures(rec)
        done = f"{self._state} done".lstrip()  # (no state where no step was logged)
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.set_description_str(done, refresh=False)
            self.bar.close()
            self.bar = None  # (the evaluation's lines print below it)
        else:
            print(f"[100.0%] step {step} {done}", flush=True)

    def log(self, rec: dict) -> None:
        self.log_file.write(json.dumps(rec) + "\n")
        self.log_file.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "img_size", "img_per_s"):
                self.tb.add_scalar(f"train/{key}", rec[key], rec["step"])

    def log_eval(self, rec: dict) -> None:
        self.eval_file.write(json.dumps(rec) + "\n")
        self.eval_file.flush()
        if self.tb is not None:
            for key in ("top1", "top5", "top1_ema"):
                if rec.get(key) is not None:
                    self.tb.add_scalar(f"eval/{key}", rec[key], rec["step"])

    def message(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:  # (left where it stopped: lines said after it come below)
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
        self.log_file.close()
        self.eval_file.close()
