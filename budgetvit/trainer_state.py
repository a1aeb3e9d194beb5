"""What a checkpoint holds of a run and how a trainer returns to it: the model, optimizer,
scaler, EMA, every rank's random state, the data position, the clock, the size plan and the
run's records; and the checkpoint write itself, which a disk error must not end the run for.

A part of Trainer (train.py), kept in its own file because it is its own concern: the loop
calls save_checkpoint; the warm-up, a resume and a rollback call load_state_dict.
"""
from __future__ import annotations

import copy
import random

import torch

from . import checkpoint, curriculum, distributed
from .ema import EMA
from .models import train_flops


def empty_window(train_s: float, step: int) -> dict:
    """An empty log window (the good steps since the last log line) opened at this point."""
    return {"loss": 0.0, "n": 0, "images": 0, "flops": 0, "t": train_s, "step": step}


class TrainerState:
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": self.rng_state(),
            "data": self.data.state_dict(),
            "clock": self.clock.state_dict(),
            "plan": [s.to_dict() for s in self.plan],
            "seconds_per_epoch": {str(k): v for k, v in self.seconds_per_epoch.items()},
            "measured_rates": {str(k): v for k, v in self.measured_rates.items()},
            "images": self.images, "stages": copy.deepcopy(self.stages),
            "evals": copy.deepcopy(self.evals), "lr_scale": self.lr_scale,
            "last_step_s": self.last_step_s, "log_window": dict(self.window),
            "faults": dict(self.faults), "config": self.cfg.to_dict(),
            "world_size": self.dist.world, "world_sizes": self.world_sizes,
            # What inference needs without the training data:
            "model_config": self.model_cfg.to_dict(), "classes": list(self.data.classes),
            "mean": list(self.data.mean), "std": list(self.data.std),
        }

    def load_state_dict(self, s: dict, restore_clock: bool = True) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        for group, settings in zip(self.opt.param_groups, self.group_settings):
            group.update(settings)  # the saved groups hold the checkpoint's config's values
        if self.scaler.is_enabled() and s["scaler"]:  # empty where the run was not fp16
            self.scaler.load_state_dict(s["scaler"])
        if self.ema is not None and s["ema"] is None:  # EMA turned on at a resume
            self.ema = EMA(self.model, self.cfg.train.ema_decay)  # from the weights loaded
        elif self.ema is not None:
            self.ema.load_state_dict(s["ema"])
        every_rank = s.get("rng_ranks")  # under torchrun: each rank's own, in rank order
        if every_rank and len(every_rank) == self.dist.world:
            self.set_rng_state(every_rank[self.dist.rank])
        elif self.dist.main:  # another world size: the other ranks keep their own seeds
            self.set_rng_state(s["rng"])
        self.data.load_state_dict(s["data"])
        was = s.get("world_sizes") or [s.get("world_size", self.dist.world)]
        self.world_sizes = was + [self.dist.world] * (was[-1] != self.dist.world)
        self.plan = [curriculum.Stage(**d) for d in s["plan"]]
        self.seconds_per_epoch = {int(k): v for k, v in s["seconds_per_epoch"].items()}
        self.measured_rates = {int(k): v for k, v in  # (older checkpoints: the planned ones)
                               s.get("measured_rates", s["seconds_per_epoch"]).items()}
        self.images, self.stages = s["images"], copy.deepcopy(s["stages"])
        self.evals, self.lr_scale = copy.deepcopy(s["evals"]), s["lr_scale"]
        self.last_step_s = s.get("last_step_s", 0.0)  # (older checkpoints lack these two)
        self.window = dict(s.get("log_window") or
                           empty_window(s["clock"]["train_s"], s["clock"]["steps"]))
        if not self.dist.main:  # the checkpoint's counts are all ranks': rank 0 carries them on
            self.data.bad_images = 0
            self.window.update(loss=0.0, n=0)
        if "flops" not in self.window:  # (older checkpoints: counted at the window's last size)
            self.window["flops"] = self.window["images"] * train_flops(
                self.model_cfg, self.stages[-1]["img_size"]) if self.stages else 0
        if restore_clock:
            self.clock.load_state_dict(s["clock"])
            self.faults = dict(s["faults"])

    def rng_state(self) -> dict:
        # This rank's own GPU only: a state per visible GPU would not restore where fewer are
        # visible (CUDA_VISIBLE_DEVICES), and restoring it would touch every rank's GPUs.
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.rt.device) if self.rt.cuda else None,
                "python": random.getstate()}

    def set_rng_state(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        cuda = rng["cuda"]
        if isinstance(cuda, list):  # (older checkpoints: one state per visible GPU)
            index = self.rt.device.index or 0  # (the runtime's CUDA device has its index)
            cuda = cuda[index] if index < len(cuda) else None
        if self.rt.cuda and cuda is not None:
            torch.cuda.set_rng_state(cuda, self.rt.device)
        random.setstate(rng["python"])

    def read_checkpoint(self, read) -> dict | None:
        """The state read(run dir) gives rank 0, on every rank: the others load the very file
        (reading for themselves, one whose read of it failed would go on from an older one, out
        of step with the rest). None where rank 0 found none."""
        state = read(self.out) if self.dist.main else None
        step = distributed.broadcast_floats([state["clock"]["steps"] if state else -1.0],
                                            self.dist, self.rt.device)[0]
        if step >= 0 and not self.dist.main:
            state = checkpoint.load(checkpoint.path_of(self.out, int(step)))
        return state

    def bad_images_total(self) -> int:
        """Unreadable training images met by every rank (each counts its share of a batch's)."""
        return int(distributed.all_sum([float(self.data.bad_images)], self.dist,
                                       self.rt.device)[0])

    def save_checkpoint(self) -> bool:
        """Write a checkpoint (rank 0); on a disk error keep the old one, warn, retry later.
        Whether it was written (on rank 0; True elsewhere)."""
        written = True
        with self.clock.paused("checkpoint"):
            # Every rank's random state (dropout masks, mixup, erasing draw from it), so a
            # resume at the same world size continues every rank's stream exactly.
            every_rank = distributed.gather_to_main(self.rng_state(), self.dist)
            # Counts each rank keeps of its own share, summed for rank 0 to carry on: unread
            # images, and the log window's loss (a mean over every rank's steps).
            bad_images, loss, n = distributed.all_sum(
                [float(self.data.bad_images), self.window["loss"], float(self.window["n"])],
                self.dist, self.rt.device)
            if self.dist.main:
                state = self.state_dict()
                state["data"]["bad_images"] = int(bad_images)
                state["log_window"].update(loss=loss, n=int(n))
                if every_rank:
                    state["rng_ranks"] = every_rank
                try:
                    checkpoint.save(state, self.out, self.clock.steps, self.cfg.checkpoint.keep)
                except OSError as e:
                    written = False
                    self.faults["checkpoint_failures"] += 1
                    self.say(f"warning: checkpoint at step {self.clock.steps} not written "
                             f"({e.strerror or e}); keeping the previous one, retrying later")
            distributed.barrier(self.dist)
        return written
