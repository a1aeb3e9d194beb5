"""Training data held in memory as one uint8 tensor (Fashion-MNIST, synthetic), augmented a
whole batch at a time on the training device: at small image sizes a per-image pipeline would
be the bottleneck on a 2-core machine.

The order of epoch e is a permutation seeded by (seed, e) and the augmentation of batch b by
(seed, e, b), so the data stream is a pure function of the position (epoch, batch),
which is all a checkpoint needs to resume it exactly.
"""
from __future__ import annotations

import torch

from . import augment
from .holdout import describe, holdout_rows
from .stream import DataStream, mix_seed


class MemoryEval:
    """An evaluation split held in memory: what `budgetvit eval` reads of Fashion-MNIST (its
    test files alone) and what MemoryData evaluates on."""

    def __init__(self, test: tuple[torch.Tensor, torch.Tensor], *, classes: list[str],
                 mean: tuple, std: tuple, device, eval_split: str = "test"):
        self.test_images, self.test_labels = test
        self.classes, self.mean, self.std = classes, mean, std
        self.device, self.eval_split = device, eval_split

    def eval_batches(self, size: int, batch_size: int, rank: int = 0, world: int = 1):
        """This rank's share of the evaluation split (every image exactly once over all ranks),
        resized to `size`: yields (float (b, C, size, size) in [0, 1], labels) on the device."""
        idx = torch.arange(rank, len(self.test_labels), world)
        for part in idx.split(batch_size):
            x = self.test_images[part].to(self.device)
            yield augment.resize(x, size), self.test_labels[part].to(self.device)


class MemoryData(DataStream, MemoryEval):
    def __init__(self, train: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor], *, classes: list[str],
                 mean: tuple, std: tuple, batch_size: int, seed: int, aug, device,
                 rank: int = 0, world: int = 1, holdout: float = 0.0):
        eval_split = "test"
        if holdout:  # evaluate on a part of train instead (see holdout.py); test is unused
            keep, held = (torch.from_numpy(r) for r in holdout_rows(len(train[1]), holdout))
            train, test = (train[0][keep], train[1][keep]), (train[0][held], train[1][held])
            eval_split = describe(holdout, len(held))
        MemoryEval.__init__(self, test, classes=classes, mean=mean, std=std, device=device,
                            eval_split=eval_split)
        self.images, self.labels = train[0].to(device), train[1].to(device)
        self.num_classes, self.in_chans = len(classes), train[0].shape[1]
        DataStream.__init__(self, len(self.labels), batch_size, seed, device, rank, world,
                            size=train[0].shape[-1])
        self.aug = aug
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._perm = torch.randperm(self.num_images, generator=gen).to(self.device,
                                                                            non_blocking=True)
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch: (float (b, C, S, S) in [0, 1], (b,))."""
        start = self.batch * self.global_batch + self.rank * self.local_batch
        idx = self._order(self.epoch)[start:start + self.local_batch]
        ops = self.aug.randaugment_ops
        u = self.batch_draws(self.epoch, self.batch, 5 + 2 * ops)  # crop, then RandAugment
        # RandAugment before the crop here (the tree and cache loaders, like timm, apply it
        # after): it takes uint8 images, and these are uint8 only until the crop resamples them.
        x = augment.randaugment(self.images[idx], ops, self.aug.randaugment_magnitude, u[:, 5:])
        x = augment.resized_crop_flip(x, self.size, self.aug.crop_scale_min, self.aug.hflip,
                                      u[:, :5])
        self.advance()
        return x, self.labels[idx]
