"""What a run tells its user: its lines on stdout, the progress bar and log.jsonl.

A part of Trainer (train.py), kept in its own file because it is its own concern: the loop,
the warm-up and the checkpoint writes call say(), log_window() and the header; only rank 0
prints.
"""
from __future__ import annotations

from . import curriculum, distributed
from .models import count_params
from .progress import fmt_duration
from .trainer_state import empty_window


class RunOutput:
    def say(self, text: str) -> None:
        if self.dist.main:
            (self.progress.message if getattr(self, "progress", None) else print)(text)

    def log_window(self, now: float, lr: float, bar: bool = True) -> dict:
        """Log the steps since the last log line (and show them, unless not `bar`)."""
        rec = self.window_record(now, lr)
        if self.dist.main:
            self.progress.log(rec)
            if bar:
                self.progress.update(self.clock.spent_units(now), rec)
        self.window = empty_window(now, self.clock.steps)
        return rec

    def show_progress(self, now: float, lr: float) -> None:
        """At a sync point: a log line at the first sync past each multiple of log_every (a
        resumed run logs the same steps as an uninterrupted one); the bar moves at every one."""
        every = self.cfg.train.log_every
        if self.clock.steps // every > self.window["step"] // every:
            self.log_window(now, lr)
        if self.dist.main:
            self.progress.tick(self.clock.spent_units(now))

    def window_record(self, now: float, lr: float) -> dict:
        """The log record of the steps since the last one (a collective: every rank calls it)."""
        window = self.window
        img_per_s = window["images"] / max(now - window["t"], 1e-9)
        # The logged loss is the mean over all ranks, i.e. over the global batch.
        loss_sum, count = distributed.all_sum([window["loss"], window["n"]], self.dist,
                                              self.rt.device)
        size = self.stages[-1]["img_size"]
        rec = {"step": self.clock.steps, "train_time_s": round(now, 3), "img_size": size,
               "lr": lr, "loss": loss_sum / max(count, 1), "img_per_s": img_per_s,
               "images": self.images, "epoch": self.images / self.data.num_images}
        if self.peak:  # (the FLOPs of every rank's images: the peak is world x one GPU's)
            flops_per_s = window["flops"] / max(now - window["t"], 1e-9)
            rec["mfu"] = flops_per_s / (self.peak * self.dist.world)
        return rec

    def print_header(self, resumed: bool) -> None:
        sizes = " -> ".join(f"{s.size}px@{s.start:.0%}" for s in self.plan)
        budget = (fmt_duration(self.budget) if self.unit == "seconds"
                  else f"{self.budget:.0f} steps")
        warmup = f"{self.clock.other_s.get('warmup', 0):.1f}s{' in all' if resumed else ''}"
        print(f"{'resuming' if resumed else 'training'} {self.cfg.model.name} "
              f"({count_params(self.model) / 1e6:.2f}M params) on {self.cfg.data.dataset}, "
              f"{self.data.num_images} images, device {self.rt.describe()}, "
              f"{self.rt.settings()}, world {self.dist.world}, budget {budget}\n"
              f"curriculum: {sizes}; warm-up {warmup} (not charged); run dir {self.out}",
              flush=True)
        final = self.cfg.curriculum.final_size_px
        if self.plan[-1].size != final:  # the paper rule's epochs per size outlast the budget
            how = ("give a larger budget" if resumed else  # (a run keeps its curriculum)
                   "lower curriculum.every_epochs or give a larger budget")
            rates = " at the warm-up's rates" if self.plan_needs_rates else ""
            print(f"note: the plan ends{rates} at {self.plan[-1].size}px, short of "
                  f"curriculum.final_size_px={final}, where the model is evaluated; {how} to "
                  f"reach it", flush=True)
        for note in self.data.notes:
            print(note, flush=True)

    def say_new_budget(self, was: float, was_unit: str, old_plan: list[dict]) -> None:
        """A run resumed with another budget (or one in the other unit) reads its schedules at
        the new budget's progress (as if that had been the budget from the start): where that
        puts it, which can be an earlier size than it trained last."""
        spent = self.clock.spent_units(self.clock.train_s, was_unit)
        before, now = min(1.0, spent / was), self.clock.progress(self.clock.train_s)
        size_was = curriculum.size_at([curriculum.Stage(**d) for d in old_plan], before)
        size = curriculum.size_at(self.plan, now)
        self.say(f"note: the schedules (size, learning rate) go on at {now:.0%} of the new "
                 f"budget (at {before:.0%} of the old one): {size_was}px -> {size}px")

    def progress_close(self) -> None:
        if self.dist.main and getattr(self, "progress", None):  # (made after the warm-up)
            self.progress.close()
