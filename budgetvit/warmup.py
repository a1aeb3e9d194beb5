"""Before the budget clock starts: every curriculum size compiled (on CUDA) and timed by a few
steps at learning rate 0, then the initial state restored, so that the warm-up trains nothing;
and the size plan made, from those timings where the paper's rule in a time budget needs them.

A part of Trainer (train.py), kept in its own file because it is its own phase of a run: it
drives the trainer's data, step, clock and state, and sets its plan and seconds_per_epoch.
"""
from __future__ import annotations

import copy
import time

from . import curriculum, distributed
from .config import ConfigError
from .runtime import compile_failure


class WarmUp:
    # An eager size whose warm-up took this long is said too (a large model on a CPU, a slow
    # input pipeline), as each compiled one is: minutes can pass before the header.
    say_after_s = 5.0

    def warm_up(self, sizes: list[int], measure: bool) -> None:
        """Run a few untimed steps at each of `sizes`: on CUDA this compiles each shape before
        the clock starts. With `measure`, also time them (seconds per epoch at each size, which
        the paper's curriculum rule needs). Then restore the state, so the warm-up steps have
        not trained the model."""
        n = self.cfg.train.warmup_steps  # timed steps: none still compiles before the clock
        if n == 0 and not self.rt.compile:
            return
        # Loader workers fill their prefetch queues while the first step compiles; steps
        # served from those queues would hide a data-bound size. Where the plan depends on
        # the measured rate, drain them first (untimed) so the timed steps wait on the data.
        drain = self.data.prefetch_batches if measure and self.plan_needs_rates else 0
        untimed = 1 + self.rt.graph_mode + drain  # the first compiles
        initial, rng = copy.deepcopy(self.state_dict()), self.rng_state()
        measured = {}
        with self.clock.paused("warmup"):
            for size in sizes:
                self.data.set_size(size)
                # Restart loader workers at this position: batches they prefetched at the
                # previous size must not be the ones timed (and compiled) for this size.
                self.data.load_state_dict(self.data.state_dict())
                t0 = time.perf_counter()
                try:
                    self._zero_lr_steps(untimed)
                except Exception as e:
                    if not self.compile_failed(e):
                        raise
                    self._zero_lr_steps(untimed)  # (eager now)
                t1 = time.perf_counter()
                # Timed back to back, as training runs them: a sync around every step would
                # add the host's launch time to the GPU's instead of overlapping the two.
                self._zero_lr_steps(n)
                t2 = time.perf_counter()
                if n:
                    measured[size] = (t2 - t1) / n * self.data.batches_per_epoch
                if self.rt.compile or t2 - t0 >= self.say_after_s:  # a while: say where it is
                    did = "compiled and ran" if self.rt.compile else "ran"
                    self.say(f"warm-up {size}px: {did} {untimed + n} steps in {t2 - t0:.1f}s "
                             f"(not charged)")
        self.load_state_dict(initial, restore_clock=False)
        self.set_rng_state(rng)  # every rank's own (load_state_dict restores rank 0's)
        if measure:  # rank 0's figures on every rank, so that all ranks make the same plan
            rates = distributed.broadcast_floats(list(measured.values()), self.dist,
                                                 self.rt.device)
            self.seconds_per_epoch = dict(zip(measured, rates))
            self.measured_rates = {**self.measured_rates, **self.seconds_per_epoch}

    def compile_failed(self, e: Exception) -> bool:
        """Whether `e` is torch.compile failing, which train.compile=auto survives: the run
        goes on eager (slower), said. With train.compile=on the run stops, said in one line."""
        cause = compile_failure(e) if self.rt.compile else None
        if cause is None:
            return False
        if self.cfg.train.compile == "on":
            raise ConfigError(f"torch.compile failed: {cause} (train.compile=off trains "
                              f"without it)") from e
        self.rt.go_eager()
        self.say(f"note: torch.compile failed: {cause}; training eager, slower (fix the cause "
                 f"and resume to compile, or set train.compile=off not to try)")
        return True

    def _zero_lr_steps(self, count: int) -> None:
        """`count` steps at learning rate 0, then wait for the device."""
        for _ in range(count):
            x, y = self.data.next_batch()
            self.step(x, y, lr=0.0)
        self.rt.sync()

    def has_rates(self, unit: str) -> bool:
        """Whether the paper rule can be planned in `unit`: a step budget converts epochs
        exactly; seconds need every size's rate (none where a step budget's run had no warm-up
        and is resumed with a time budget: it keeps its plan)."""
        sizes = curriculum.planned_sizes(self.cfg)
        return unit == "steps" or set(sizes) <= set(self.seconds_per_epoch)

    @property
    def plan_needs_rates(self) -> bool:
        """The paper's rule in a time budget converts epochs to seconds at measured rates."""
        return self.cfg.curriculum.mode == "paper" and self.unit == "seconds"

    def sizes_ahead(self) -> list[int]:
        """The sizes of the plan's stages not yet finished (what a resumed run still trains)."""
        if self.plan_needs_rates and self.stages:  # (any size may come: each ends on its epochs)
            sizes = curriculum.planned_sizes(self.cfg)
            return [s for s in sizes if s >= self.stages[-1]["img_size"]]
        p = self.clock.progress(self.clock.train_s)
        return list(dict.fromkeys(s.size for s in self.plan if s.end > p)) or [self.plan[-1].size]

    def retime(self, was: int) -> bool:
        """The paper rule resumed on another number of processes than `was`: the plan's rates
        are not this run's. The size being trained and the later ones are timed again, and the
        plan is made again: it goes on from here at the new rates (the finished sizes keep their
        stages). Whether it did (not at the final size, which lasts to the end at any rate)."""
        c, now = self.cfg.curriculum, self.clock.train_s
        sizes = curriculum.paper_sizes(c.start_size_px, c.step_px, c.final_size_px)
        current = curriculum.size_at(self.plan, self.clock.progress(now))
        if current == sizes[-1] or not self.cfg.train.warmup_steps:  # (no steps: no timing)
            return False
        old = self.seconds_per_epoch
        if self.rt.compile:
            self.rt.allow_graphs(len(sizes))
        self.warm_up(sizes[sizes.index(current):], measure=True)
        # What is left of its epochs is counted from the images it trained: the rates it was
        # planned at may be an earlier world size's, or a mix of two.
        self.seconds_per_epoch = curriculum.resumed_rates(
            sizes, c.every_epochs, old, self.seconds_per_epoch, now, self.trained_at(current)[0])
        self.say(f"note: resumed at world size {self.dist.world} (was {was}): the sizes from "
                 f"{current}px on were timed again and the size plan goes on at these rates")
        self.make_plan()
        return True

    def keep_to_epochs(self, now: float) -> None:
        """The paper rule in a time budget, at a sync point: a size lasts its N epochs as
        trained, however far off the warm-up's rates were (a loaded machine, a data-bound
        size). A size whose epochs are done ends now, said; one whose stage ends short of them
        goes on, for half as long again as its rate so far foretells (its count then ends it,
        not this guess). The sizes before it are fitted to where it started (a plan made at
        other rates, a resumed step budget's, can say otherwise), the sizes ahead planned again
        at their warm-up rates, scaled as this one's turned out."""
        if not self.plan_needs_rates or not self.stages or not self.has_rates("seconds"):
            return
        c, sizes = self.cfg.curriculum, curriculum.planned_sizes(self.cfg)
        current = self.stages[-1]["img_size"]
        done, took = self.trained_at(current)
        if current == sizes[-1] or not done or not took:
            return
        finished = done >= c.every_epochs
        planned = curriculum.size_at(self.plan, self.clock.progress(now))
        if planned == (sizes[sizes.index(current) + 1] if finished else current):  # as planned
            return
        # (ended a hair before now: the plan's shares are rounded to 12 digits)
        end = now - 1e-9 * self.budget if finished else \
            now + 1.5 * (c.every_epochs - done) * took / done
        self.seconds_per_epoch = curriculum.corrected_rates(
            sizes, c.every_epochs, self.seconds_per_epoch, self.measured_rates, current,
            now - took, end, took / done)
        self.make_plan()
        if finished:
            ahead = " -> ".join(f"{s.size}px@{s.start:.0%}" for s in self.plan
                                if s.size > current)
            short = ("" if self.plan[-1].size == sizes[-1] else
                     f" (ending short of {sizes[-1]}px at these rates)")
            self.say(f"note: {current}px trained its {c.every_epochs:g} epochs by "
                     f"{now / self.budget:.0%} of the budget; the plan from here: {ahead}{short}")

    def trained_at(self, size: int) -> tuple[float, float]:
        """(epochs, seconds) the run has trained at `size`, from its stages."""
        trained = [st for st in self.stages if st["img_size"] == size]
        return (sum(st["images"] for st in trained) / self.data.num_images,
                sum(st["end_s"] - st["start_s"] for st in trained))

    def make_plan(self) -> None:
        if self.unit == "steps":  # epochs convert to steps exactly
            per_epoch = {s: float(self.data.batches_per_epoch)
                         for s in curriculum.planned_sizes(self.cfg)}
        else:  # measured by the warm-up (validate() makes sure there is one if mode=paper)
            per_epoch = self.seconds_per_epoch
        self.plan = curriculum.make_plan(self.cfg, per_epoch, self.budget)
