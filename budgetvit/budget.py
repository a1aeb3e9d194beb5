"""The budget clock: training time is what the budget counts; everything else is set aside.

The clock runs while the trainer trains (data loading included) and is paused around
evaluation, checkpoint writes and warm-up, whose durations are kept separately. It is read
only after synchronising the device, so queued GPU work is not missed. Its state goes in
every checkpoint. In step-budget mode progress counts optimizer steps instead of seconds,
which makes runs reproducible bit for bit (training time is still measured and reported).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable


class BudgetClock:
    def __init__(self, budget: float, unit: str = "seconds", sync: Callable[[], None] = lambda: None):
        self.budget, self.unit, self.sync = budget, unit, sync
        self.train_s = 0.0  # charged training time
        self.steps = 0  # optimizer steps taken
        self.other_s: dict[str, float] = {}  # eval, checkpoint, warmup, ...: not charged
        self._since: float | None = None  # perf_counter when the clock last started

    # -- running and pausing
    def start(self) -> None:
        self.sync()
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.sync()
            self.train_s += time.perf_counter() - self._since
            self._since = None

    @contextmanager
    def paused(self, kind: str):
        """Time a block of non-training work under `kind` without charging it."""
        running = self._since is not None
        self.stop()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.other_s[kind] = self.other_s.get(kind, 0.0) + time.perf_counter() - t0
            if running:
                self.start()

    # -- reading
    def read(self) -> float:
        """Training seconds so far (synchronises the device first)."""
        if self._since is None:
            return self.train_s
        self.sync()
        return self.train_s + time.perf_counter() - self._since

    def spent_units(self, train_s: float, unit: str | None = None) -> float:
        """What is spent in `unit` (default: the budget's own)."""
        return self.steps if (unit or self.unit) == "steps" else train_s

    def progress(self, train_s: float) -> float:
        """Budget progress p in [0, 1] given a clock reading."""
        return min(1.0, self.spent_units(train_s) / self.budget)

    def budget_s(self) -> float | None:
        return self.budget if self.unit == "seconds" else None

    # -- checkpointing
    def state_dict(self) -> dict:
        return {"train_s": self.read(), "steps": self.steps, "other_s": dict(self.other_s)}

    def load_state_dict(self, state: dict) -> None:
        self.train_s, self.steps = float(state["train_s"]), int(state["steps"])
        self.other_s = dict(state["other_s"])
