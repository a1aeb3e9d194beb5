"""The training loop: one trainer for every model, dataset, device and world size.

Read top to bottom: setup (model, optimizer, EMA, data, clock), resume or warm-up, the loop
(progress p -> image size and lr -> step -> log / eval / checkpoint), the end (final checkpoint,
evaluation, summary.json). Clock, schedules, curriculum, checkpoints, the warm-up (warmup.py),
what a checkpoint holds (trainer_state.py), what a run prints and logs (run_output.py) and the
checks a resume makes (resume.py) live in their own files.
"""
from __future__ import annotations

import contextlib
import gc
import math
import random
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, curriculum, distributed, resume
from .budget import BudgetClock
from .config import (Config, ConfigError, SameOnEveryRank, check_world, from_dict, model_shape,
                     parse_budget, validate)
from .data import augment, build_data
from .ema import EMA
from .evaluate import evaluate, normalize
from .folder_lock import folder_lock
from .models import VisionTransformer, param_groups, train_flops
from .out_folder import check_folder
from .output import guarded_output
from .progress import Progress, fmt_duration
from .runtime import peak_flops, resolve
from .schedules import lr_at
from .summary import code_version, print_summary, write_summary
from .trainer_state import TrainerState, empty_window
from .run_output import RunOutput
from .warmup import WarmUp


class TrainingStopped(RuntimeError):
    """Training cannot go on (repeated non-finite steps); the message says why."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: a closed terminal


class SignalOutsideLoop(BaseException):
    """A stop (a signal, closed output) where there is no step to finish (warm-up, final
    checkpoint and evaluation): raised at once, like KeyboardInterrupt. Args: what stopped
    the run, and the phase it stopped."""


def prepare_out_dir(out: str | Path) -> Path:
    """Create the run directory and prove it is writable, before any work starts."""
    out = Path(out)
    check_folder(out, "--out")  # a file in the way: said so, not as "not writable"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out} is not writable: {e.strerror or e}") from None
    return out


# (warm_up, make_plan: warmup.py; state: trainer_state.py; say, log_window: run_output.py)
class Trainer(WarmUp, TrainerState, RunOutput):
    def __init__(self, cfg: Config, out: str | Path, command: str = ""):
        self.wall0 = time.perf_counter()  # wall_time_s counts setup (data scan, model) too
        validate(cfg)
        self.cfg, self.command = cfg, command
        # Read now: edits made to the checkout while this process trains are not its code.
        self.code_version = code_version()
        self.budget, self.unit = parse_budget(cfg.train.budget)
        self.dist = distributed.init("cuda" if resolve(cfg.train).cuda else "cpu")
        self.rt = resolve(cfg.train, self.dist.local_rank)
        self.peak = peak_flops(self.rt.device)  # (for MFU; a bad override fails here, at once)
        check_world(cfg, self.dist.world)
        self.out = prepare_out_dir(out) if self.dist.main else Path(out)
        t = cfg.train
        if t.deterministic:
            if self.rt.cuda:  # (cuBLAS would also need CUBLAS_WORKSPACE_CONFIG set in advance)
                raise SameOnEveryRank("train.deterministic=true is for CPU runs: on CUDA the "
                                      "position embedding's resampling has no deterministic "
                                      "backward")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(t.seed + self.dist.rank)
        random.seed(t.seed + self.dist.rank)

        self.data = build_data(cfg, self.rt.device, self.dist.rank, self.dist.world)
        self.model_cfg = model_shape(cfg, self.data.num_classes, self.data.in_chans)
        self.model = VisionTransformer(self.model_cfg).to(self.rt.device)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.optim.weight_decay),
                                     lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                     fused=True)
        self.group_settings = [{"betas": g["betas"], "weight_decay": g["weight_decay"]}
                               for g in self.opt.param_groups]  # the config's, per group
        self.scaler = torch.amp.GradScaler(self.rt.device.type,
                                           enabled=self.rt.amp_dtype == torch.float16)
        self.forward = self.model
        if self.dist.enabled:  # (which gives every rank rank 0's initial weights)
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.rt.cuda else None)
        self.ema = EMA(self.model, t.ema_decay) if t.ema else None  # of those weights
        self.forward = self.rt.compiled(self.model, len(curriculum.planned_sizes(cfg)),
                                        self.forward)
        self.mix = augment.mixup_cutmix(cfg.aug.mixup, cfg.aug.cutmix, self.data.num_classes)
        self.clock = BudgetClock(self.budget, self.unit, self.rt.sync)
        # Steps between host-device syncs (clock reads, loss and fault read-back): free on
        # CPU, so every step there; on CUDA every few, so the GPU queue never drains.
        self.sync_every = t.sync_every or (8 if self.rt.cuda else 1)
        self.stop_signal: str | None = None
        # Where the run is: a signal in the "training loop" stops it at the next sync point,
        # elsewhere ("warm-up", "final checkpoint and evaluation") at once.
        self.phase = "warm-up"
        self.bad_run = 0  # consecutive non-finite steps

        # Everything below is the run's state and goes into every checkpoint.
        self.plan: list[curriculum.Stage] = []
        self.images = 0
        self.world_sizes = [self.dist.world]  # each change of world size on resume appends
        self.stages: list[dict] = []  # {img_size, start_s, end_s, images}
        self.evals: list[dict] = []
        self.lr_scale = 1.0  # lowered by each rollback after non-finite steps
        self.faults = {"nonfinite_steps": 0, "rollbacks": 0, "checkpoint_failures": 0}
        self.seconds_per_epoch, self.measured_rates = {}, {}  # (as planned; as timed)
        self.last_step_s = 0.0  # the last sync interval (bounds the overrun past the budget)
        # The steps since the last log line: a resumed run's first line is then the same mean
        # (over the same steps) as the uninterrupted run's.
        self.window = empty_window(0.0, 0)

    # ------------------------------------------------------------------ one step

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.aug.label_smoothing)

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor):
        """(x, y) -> (normalised, erased and mixed x, y or soft targets). Erasing comes first,
        as in DeiT (erasing is part of each image's transform there, mixup acts on the batch):
        an erased patch keeps its mixing partner's share instead of being pure noise."""
        x = augment.random_erasing(normalize(x, self.data.mean, self.data.std),
                                   self.cfg.aug.random_erasing)
        return self.mix(x, y) if self.mix is not None else (x, y)

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float):
        """One optimizer step with no host-device sync. Returns (loss, ok) as device tensors;
        a non-finite loss or gradient (ok False) skips the update on the device, so weights,
        optimizer state and EMA stay as they were. (In fp16 the loss scaler skips overflowing
        gradients under a finite loss the same way, with ok True: not a fault.)"""
        for group in self.opt.param_groups:
            group["lr"] = lr
        x, y = self.augment_batch(x, y)
        with self.rt.autocast():
            loss = self.loss_fn(self.forward(x), y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              self.cfg.optim.grad_clip or math.inf)
        loss = loss.detach().float()
        if self.scaler.is_enabled():  # fp16: the scaler skips overflowing steps by itself
            # An overflow with a finite loss is the scaler calibrating its scale, not a fault;
            # but the weights did not move, so neither may the EMA.
            ok = torch.isfinite(loss)
            stepped = ok & torch.isfinite(norm)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            ok = stepped = torch.isfinite(loss) & torch.isfinite(norm)
            # Fused AdamW skips its update where found_inf is 1, on the device (the protocol
            # GradScaler uses), so guarding the step costs no sync.
            self.opt.found_inf = (~ok).float()
            self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model, stepped)
        self.opt.zero_grad(set_to_none=True)
        return loss, ok

    # ------------------------------------------------------------------ helpers

    def run_eval(self, train_s: float, final: bool = False) -> dict:
        """Evaluate at the final size (clock paused); the EMA weights only at the end, which
        halves the cost of the evaluations during training."""
        size = self.cfg.curriculum.final_size_px
        bs = self.cfg.train.eval_batch_size
        with self.clock.paused("eval"):
            r = evaluate(self.model, self.data, size, bs, self.rt, self.dist)
            rec = {"step": self.clock.steps, "train_time_s": train_s, "images": self.images,
                   "img_size": size, "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
                   "eval_images": r["images"]}
            if self.ema is not None and final:
                e = evaluate(self.ema.module, self.data, size, bs, self.rt, self.dist)
                rec.update(top1_ema=e["top1"], top5_ema=e["top5"])
        self.evals.append(rec)
        if self.dist.main:
            self.progress.log_eval(rec)
        if not final:  # (the final one is the summary's)
            self.say(f"evaluation at step {rec['step']} ({fmt_duration(train_s)} of training, "
                     f"{size}px, {self.data.eval_split}): top-1 {r['top1']:.2f}%, "
                     f"top-5 {r['top5']:.2f}%")
        return rec

    def _on_signal(self, signum, frame) -> None:
        self._stop(signal.Signals(signum).name)

    def _stop(self, why: str) -> None:
        if self.phase == "stopping":  # (a second signal while it says how to resume)
            return
        # Kept where it is raised too: an exception raised in a __del__ (a loader iterator's
        # as it shuts down) is lost, and the training loop then stops at its first sync point.
        self.stop_signal = why
        if self.phase != "training loop":
            stopped_in, self.phase = self.phase, "stopping"
            raise SignalOutsideLoop(why, stopped_in)
        # (in the loop: the next sync point stops every rank at the same step)

    def _rollback(self, first_bad: int, last_bad: int) -> None:
        """Back to the newest checkpoint (every rank reads it) with the lr lowered; after
        max_rollbacks, stop with the range of bad steps."""
        self.faults["rollbacks"] += 1
        if self.faults["rollbacks"] > self.cfg.train.max_rollbacks:
            raise TrainingStopped(
                f"non-finite loss or gradient in steps {first_bad}-{last_bad} after "
                f"{self.cfg.train.max_rollbacks} rollbacks; lower optim.lr or check the data")
        state = self.read_checkpoint(checkpoint.load_latest)
        if state is None:
            raise TrainingStopped("non-finite steps and no checkpoint to roll back to")
        faults, scale = dict(self.faults), min(self.lr_scale, state["lr_scale"])
        self.load_state_dict(state, restore_clock=False)
        self.faults = faults
        # Lower than any lr tried so far: the checkpoint's own scale is that of an earlier try.
        self.lr_scale = scale * self.cfg.train.rollback_lr_factor
        # The clock keeps running: time lost to the fault is charged, as it would be anyway.
        self.clock.steps = state["clock"]["steps"]
        # Steps to the next checkpoint count from here: the newest checkpoint written may be
        # older than the last one tried (a failed write).
        self._last_ckpt = (self._last_ckpt[0], self.clock.steps)
        if self.dist.main:  # the steps after the checkpoint will be logged again
            self.progress.rewind(self.clock.steps, self.evals)
        self.say(f"warning: {self.bad_run} non-finite steps in a row ({first_bad}-{last_bad});"
                 f" rolled back to step {self.clock.steps} with lr x{self.lr_scale:g}")

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train (or resume) to the end of the budget. SIGTERM / SIGINT / SIGHUP, or output
        that nobody reads any more (output.py), stop it and say how to resume: in the loop at
        the next sync point, with a checkpoint; elsewhere at once."""
        # A signal set to be ignored stays so: SIGHUP under nohup, SIGINT in a background job.
        handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            with guarded_output(lambda: self._stop("closed output")):
                try:
                    return self._run()
                except SignalOutsideLoop as e:
                    goal = ("go on from the newest checkpoint"
                            if checkpoint.list_checkpoints(self.out)
                            else "start again (nothing was saved yet)")
                    why, phase = e.args
                    self.say(f"stopped by {why} during the {phase}; rerun "
                             f"{self.command or 'the same command'} to {goal}")
                    self.progress_close()
                    return {"interrupted": True, "step": self.clock.steps}
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _run(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        state = self.read_checkpoint(checkpoint.resume_state)
        resumed = state is not None
        if resumed:
            resume.check_resumable(self.model, self.data, state, cfg.to_dict(), self.out)
            self.load_state_dict(state)
            if self.clock.progress(self.clock.train_s) >= 1.0:
                done = resume.finished_summary(self.out, self.clock.steps)
                if done is not None:
                    if self.dist.main:
                        print(f"{self.out} holds a finished run (step {self.clock.steps}); "
                              f"give a larger --budget to go on, another --out for a new run")
                        changed = resume.config_changes(cfg.to_dict(), state["config"])
                        if changed:  # (not silently dropped)
                            print(f"note: not applied, the run being finished: "
                                  f"{', '.join(changed)}", flush=True)
                        print_summary(done, self.out)
                    return done
            for warning in resume.config_warnings(cfg.to_dict(), state["config"]):
                self.say(warning)
            # As the warning says, the run keeps its curriculum: its final size is the one
            # evaluated and reported, not the new config's.
            cfg.curriculum = from_dict(state["config"]).curriculum
            timed = False  # (by a warm-up that also compiled)
            was_budget, was_unit = parse_budget(state["config"]["train"]["budget"])
            if cfg.curriculum.mode == "paper" and self.has_rates(self.unit):
                # The rule fixes epochs per size, not budget shares: another budget reads it
                # again (same measured rates), as if that had been the budget from the start.
                self.make_plan()
                was = state.get("world_size", self.dist.world)
                timed = self.plan_needs_rates and was != self.dist.world and self.retime(was)
            if (was_budget, was_unit) != (self.budget, self.unit):
                self.say_new_budget(was_budget, was_unit, state["plan"])
            if self.rt.compile and not timed:  # compile what is to come before the clock runs
                self.rt.allow_graphs(len({s.size for s in self.plan}))  # (the run's own plan)
                self.warm_up(self.sizes_ahead(), measure=False)
        else:
            self.warm_up(curriculum.planned_sizes(cfg), measure=True)
            self.make_plan()
        if self.dist.main:
            self.print_header(resumed)  # (before the progress bar, which holds its line)
            self.progress = Progress(self.out, self.budget, self.unit,
                                     self.clock.spent_units(self.clock.train_s),
                                     last_step=self.clock.steps if resumed else -1,
                                     evals=self.evals)
        if not resumed:
            if self.dist.main:  # an earlier run's summary in this folder (checkpoints deleted)
                (self.out / "summary.json").unlink(missing_ok=True)  # would pass for this one's
            self.save_checkpoint()  # step 0: there is always a state to roll back to
        self._last_ckpt = (self.clock.train_s, self.clock.steps)
        pending: list[tuple] = []  # (loss, ok, stage) of steps not yet read from the device
        train_s = prev_s = self.clock.train_s
        # (lr: the checkpoint's last step's, for a line logged before the first step)
        lr, stops = self.opt.param_groups[0]["lr"], 0.0
        self.phase = "training loop"
        self.clock.start()
        while True:
            # Sync point: read the clock (the device is synchronised first), fetch the
            # pending losses and fault flags, log, checkpoint, evaluate. Between sync points
            # the device runs ahead of the host undisturbed. A step budget's last step is
            # one too (a time budget ends only at a clock reading).
            if (self.clock.steps % self.sync_every == 0 or
                    self.clock.progress(train_s) >= 1.0):
                # The clock is rank 0's (the others add 0); a signal to any rank stops all.
                now = self.clock.read()
                train_s, stops = distributed.all_sum(
                    [now if self.dist.main else 0.0, float(self.stop_signal is not None)],
                    self.dist, self.rt.device)
                if stops and not self.stop_signal:
                    self.stop_signal = "a signal to another rank"
                if pending:  # (none at a resume's first reading: the checkpoint's stands)
                    self.last_step_s = train_s - prev_s
                prev_s = train_s
                self.drain(pending)
                if self.stages:
                    self.stages[-1]["end_s"] = train_s
                self.show_progress(train_s, lr)  # (log.jsonl at log_every steps, the bar)
                if stops or self.clock.progress(train_s) >= 1.0:
                    # The overrun past the budget is at most the last sync interval; the
                    # final checkpoint and evaluation follow.
                    break
                self.keep_to_epochs(train_s)  # (the paper rule: a size ends on its epochs)
                # Evaluate first, so that the checkpoint holds this evaluation and a run
                # resumed from it does not repeat it (nor evaluate its step twice).
                # From the evaluations the run holds: a rollback takes back those after its
                # checkpoint, and the next one is then due at once.
                last = self.evals[-1] if self.evals else {"step": -1, "train_time_s": 0.0}
                if (t.eval_every_s and train_s - last["train_time_s"] >= t.eval_every_s and
                        last["step"] != self.clock.steps):
                    self.run_eval(train_s)
                k = cfg.checkpoint
                due = ((k.every_s and train_s - self._last_ckpt[0] >= k.every_s) or
                       (k.every_steps and
                        self.clock.steps - self._last_ckpt[1] >= k.every_steps))
                if due and not self.bad_run:  # not inside a run of skipped steps
                    self.save_checkpoint()
                    # The shared reading, not this rank's own clock (they differ by a few
                    # ms): every rank must find the next checkpoint due at the same step.
                    self._last_ckpt = (train_s, self.clock.steps)
            p = self.clock.progress(train_s)
            size = curriculum.size_at(self.plan, p)
            if size != self.data.size:  # after a resume the loader starts at its default size
                self.data.set_size(size)
            if not self.stages or self.stages[-1]["img_size"] != size:
                self.stages.append({"img_size": size, "start_s": train_s, "end_s": train_s,
                                    "images": 0})
            lr = lr_at(p, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup,
                       cfg.optim.decay) * self.lr_scale
            x, y = self.data.next_batch()
            loss, ok = self.step(x, y, lr)
            self.clock.steps += 1
            pending.append((loss, ok, self.stages[-1]))
        self.clock.stop()
        self.drain(pending)
        self.phase = "final checkpoint and evaluation"
        train_s = self.clock.read()
        # The ranks' shared decision at the last sync point, not this rank's flag: a signal
        # that came after it would send this rank alone down the interrupted path.
        if stops:
            # Not amid non-finite steps: a resume would start inside them, past its rollback
            # point.
            written = not self.bad_run and self.save_checkpoint()
            saved = ("checkpoint written" if written else
                     "NO checkpoint written at this step (see the warnings above); resuming "
                     "goes back to the previous one")
            self.progress_close()  # (a bar would be drawn again below the last line)
            self.say(f"stopped by {self.stop_signal} at step {self.clock.steps} "
                     f"({fmt_duration(train_s)} of training); {saved}. "
                     f"Resume with: {self.command or 'the same command'}")
            return {"interrupted": True, "step": self.clock.steps}
        # The steps since the last log line are logged too (all ranks: a collective), then the
        # 100% line, before the final evaluation: its figures are this step's, not stale ones.
        # (Decided on images, which every rank counts alike: its loss count is rank 0's alone
        # after a resume. The window is emptied before the final checkpoint: a run killed
        # after it does not log these steps twice.)
        rec = self.log_window(train_s, lr, bar=False) if self.window["images"] else None
        if self.dist.main:
            self.progress.finish(self.clock.steps, rec)
        last = self.evals[-1] if self.evals else {}
        if last.get("step") == self.clock.steps and (self.ema is None or "top1_ema" in last):
            # These weights (and EMA) are evaluated already: the state of a run killed after
            # its final checkpoint, before summary.json.
            final = last
        else:
            self.save_checkpoint()  # before the final evaluation: a kill during it loses nothing
            self.say(f"final evaluation at {self.cfg.curriculum.final_size_px}px on "
                     f"{self.data.eval_split}{' (weights and EMA)' if self.ema else ''} ...")
            final = self.run_eval(train_s, final=True)
            # Again, now holding the final evaluation: a larger --budget goes on from here
            # without evaluating this step twice.
            self.save_checkpoint()
        bad_images = self.bad_images_total()
        if self.dist.main:
            self.progress.close()
            return write_summary(self, final, bad_images, time.perf_counter() - self.wall0)
        return {}

    def drain(self, pending: list[tuple]) -> None:
        """Read the losses and fault flags of the pending steps from the device (one sync),
        count good steps' images, and handle runs of non-finite steps: each is reported, and
        max_bad_steps in a row roll the run back to its last checkpoint with a lower lr."""
        if not pending:
            return
        # A step is good only where it was good on every rank: in fp16 one rank's loss can
        # overflow alone (every rank's scaler then skips the step, the gradients being summed),
        # and ranks that disagree on faults would checkpoint or roll back alone.
        good = distributed.all_min(torch.stack([ok.float() for _, ok, _ in pending]), self.dist)
        values = torch.stack([torch.stack([l for l, _, _ in pending]), good], 1).tolist()
        first_step = self.clock.steps - len(pending) + 1
        stages = [stage for _, _, stage in pending]
        pending.clear()
        B = self.cfg.train.batch_size
        for i, ((loss, ok), stage) in enumerate(zip(values, stages)):
            step = first_step + i
            if ok:
                self.bad_run = 0
                self.images += B
                stage["images"] += B
                w = self.window
                # FLOPs per step, not per window: a window can span a change of size.
                w.update(loss=w["loss"] + loss, n=w["n"] + 1, images=w["images"] + B,
                         flops=w["flops"] + B * train_flops(self.model_cfg, stage["img_size"]))
                continue
            self.faults["nonfinite_steps"] += 1
            self.bad_run += 1
            self.say(f"warning: non-finite loss or gradient at step {step}; update skipped")
            if self.bad_run >= self.cfg.train.max_bad_steps:
                self._rollback(step - self.bad_run + 1, step)  # restores the log window too
                self.bad_run = 0
                return  # the steps after this one were undone by the rollback


def train(cfg: Config, out: str | Path, command: str = "") -> dict:
    """Train in `out` (resuming what it holds), with the folder locked against a second run;
    under torchrun rank 0 holds the lock for the job (its other ranks share the folder)."""
    with folder_lock(Path(out)) if distributed.is_main_process() else contextlib.nullcontext():
        return _train(cfg, out, command)


def _train(cfg: Config, out: str | Path, command: str) -> dict:
    trainer = Trainer(cfg, out, command)
    try:
        result = trainer.run()
        if trainer.dist.enabled:  # lets users (and tests) see that every rank stopped together
            plan = ", ".join(f"{st.size}px to {st.end:.6f}" for st in trainer.plan)
            how = "stopped" if result.get("interrupted") else "finished"
            print(f"rank {trainer.dist.rank}/{trainer.dist.world}: {how} at step "
                  f"{trainer.clock.steps}{f', plan {plan}' if plan else ''}", flush=True)
        return result
    except (torch.distributed.DistError, RuntimeError) as e:
        if not trainer.dist.enabled or isinstance(e, (TrainingStopped,
                                                      checkpoint.CheckpointError)):
            raise  # (a rank's own error, not a lost peer's)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TrainingStopped(
            f"rank {trainer.dist.rank}: lost contact with another process ({first}); the "
            f"last checkpoint in {trainer.out} is intact: rerun the same command to resume"
        ) from None
    finally:
        # The DDP wrapper first: freed after the group, its reducer would destroy the gloo
        # group holding the GIL while a gloo thread waits for the GIL to free a finished
        # collective's tensors, a deadlock at exit (seen under load, torch 2.11). The group's
        # own Python object releases the GIL as it goes.
        trainer.forward = None
        gc.collect()  # (torch.compile's leftovers can hold the wrapper in reference cycles)
        distributed.shutdown(trainer.dist)
