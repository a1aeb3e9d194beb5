"""What every training-data stream shares: its position (epoch, batch) and current size.

A stream is a pure function of its position: epoch e's order is a permutation seeded by
(seed, e), and every image's augmentation is seeded by its place in it. So (epoch, batch) is
all a checkpoint needs to resume the stream exactly.
"""
from __future__ import annotations

import torch

from ..config import ConfigError


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() of tuples is not stable across runs)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def loader_generator(*parts: int) -> torch.Generator:
    """For a DataLoader's own draw (its workers' base seed), which otherwise comes from the
    global RNG that mixup and drop path use: a loader restarted on resume would move it, and
    the resumed run would leave the uninterrupted run's random stream."""
    return torch.Generator().manual_seed(mix_seed(*parts))


class DataStream:
    prefetch_batches = 0  # batches a (re)started stream may have ready before they are asked for
    notes: tuple[str, ...] = ()  # lines for the run's header: what to know of the data

    def __init__(self, num_images: int, batch_size: int, seed: int, device, rank: int,
                 world: int, size: int):
        if batch_size > num_images:  # (data.holdout's images are not training images)
            raise ConfigError(f"train.batch_size={batch_size} exceeds the {num_images} "
                              f"training images")
        self.num_images, self.seed, self.device = num_images, seed, device
        self.global_batch, self.local_batch = batch_size, batch_size // world
        self.rank, self.world = rank, world
        self.batches_per_epoch = num_images // batch_size  # the ragged last batch is dropped
        self.epoch, self.batch, self.size = 0, 0, size
        self.bad_images = 0  # unreadable training images met (and replaced) so far

    def set_size(self, size: int) -> None:
        self.size = size

    def batch_draws(self, epoch: int, batch: int, columns: int) -> torch.Tensor:
        """Uniform draws (CPU, (local batch, columns)) for this rank's images of global batch
        (epoch, batch): made for the whole global batch from its position, then sliced, so
        every image gets the same draws whatever the world size."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, batch))
        u = torch.rand(self.global_batch, columns, generator=gen)
        return u[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]

    def advance(self) -> None:
        """Move the position past the batch just produced."""
        self.batch += 1
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        # num_images: what the position counts batches of (resume.check_resumable).
        return {"epoch": self.epoch, "batch": self.batch, "bad_images": self.bad_images,
                "num_images": self.num_images}

    def load_state_dict(self, state: dict) -> None:
        # The count goes back with the position: the images met after it will be met again.
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.bad_images = int(state.get("bad_images", 0))  # older checkpoints lack it
