"""CacheData: batches from a prepared cache (cache.py), behind FolderData's interface.

Per image, in a DataLoader worker process:
  1. draw the random-resized crop (torchvision's rule, seeded by (seed, epoch, index)) in the
     stored image's pixels, from the index alone, before touching the image data;
  2. take the smallest stored copy (full, 1/2, 1/4 size) in which the crop still spans at least
     `size` px each way, then decode it at the smallest JPEG DCT scale (PIL's draft: 1/2, 1/4,
     1/8) that keeps that true. Neither step ever upsamples more than a full decode would, and
     at small curriculum sizes most images decode from a copy with a quarter of the pixels;
  3. crop + resize (bilinear, antialiased, as torchvision's PIL path) in one PIL call, flip,
     and copy into the batch tensor, which a worker allocates in shared memory.
A worker builds a whole batch, one (B, 3, S, S) uint8 tensor: no per-image collate. The
DataLoader pins it when CUDA is present and prefetches 2 batches per worker (with a worker
per core that is already 32 batches in /dev/shm on a 16-core box); next_batch copies it to the
device without blocking. RandAugment, when on, runs batched on the device with draws
seeded by the position; normalisation, mixup/cutmix and random erasing run batched in the
trainer. The sampler, the seeding and the state are FolderData's, so a run can switch between
a tree and its cache keeping labels, class order and the order of images, provided prepare
skipped no file: a skipped file changes the image count, hence every epoch's order and the
rows data.holdout sets aside. The crops differ (the same rule, other random draws).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from . import augment
from .cache import BAD_FILES, CacheSplit, shard_name
from .holdout import describe, holdout_rows
from .imagefolder import (EVAL_CROP, IMAGENET_MEAN, IMAGENET_STD, WorkerStream, read_or_stand_in,
                          to_device)
from .stream import mix_seed

LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # random-resized-crop aspect-ratio range


def random_resized_crop(rng: random.Random, w: int, h: int, scale_min: float):
    """(left, top, width, height) in pixels: an area share U(scale_min, 1) with aspect ratio
    log-U(3/4, 4/3), torchvision's RandomResizedCrop.get_params rule (10 tries, then the
    central crop with the ratio clamped)."""
    for _ in range(10):
        area = w * h * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(*LOG_RATIO))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    ratio = w / h
    cw, ch = w, h
    if ratio < 3 / 4:
        ch = round(w * 4 / 3)
    elif ratio > 4 / 3:
        cw = round(h * 4 / 3)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def center_crop(w: int, h: int, size: int):
    """The evaluation view in stored pixels: resize the shorter side to size / 0.875, keep the
    central size x size (FolderData's Resize + CenterCrop, as one box)."""
    side = min(w, h) * size / round(size / EVAL_CROP)
    return (w - side) / 2, (h - side) / 2, side, side


def best_level(widths, heights, box, size: int) -> int:
    """The smallest stored copy (level) in which the box (level-0 px) still spans at least
    `size` px each way. widths, heights: (levels,) sizes of the copies."""
    _, _, cw, ch = box
    for level in range(len(widths) - 1, 0, -1):
        if min(cw * widths[level] / widths[0], ch * heights[level] / heights[0]) >= size:
            return level
    return 0


def crop_resize(img: Image.Image, box, size: int) -> Image.Image:
    """(size x size) RGB image of the box (x, y, w, h in stored pixels) of a lazily opened image,
    decoded at the smallest JPEG scale that keeps the box at least `size` px each way."""
    x, y, cw, ch = box
    w, h = img.size
    reduce = 1.0
    for r in (8, 4, 2):
        if img.format == "JPEG" and min(cw, ch) / r >= size:
            drafted = img.draft("RGB", (max(1, w // r), max(1, h // r)))
            if drafted is not None:  # coordinates shrink by the scale PIL actually chose
                reduce = w / drafted[1][2]
            break
    box = (x / reduce, y / reduce, (x + cw) / reduce, (y + ch) / reduce)
    return img.resize((size, size), Image.BILINEAR, box=box)


class CacheDataset(Dataset):
    """Made a whole batch at a time: batch(keys [(index, size, epoch)]) -> (uint8 (B, 3, S, S),
    labels (B,), bad (B,): READ, STOOD_IN or NO_IMAGE, as imagefolder.read_or_stand_in)."""

    def __init__(self, split: CacheSplit, train: bool, scale_min: float, hflip: bool, seed: int):
        self.split, self.train, self.scale_min, self.hflip, self.seed = (
            split, train, scale_min, hflip, seed)

    def __len__(self) -> int:
        return len(self.split)

    def rng(self, i: int, epoch: int) -> random.Random:
        """Image i's augmentation draws in epoch `epoch`, the same for every backend."""
        return random.Random(mix_seed(self.seed, epoch, i))

    def plan(self, i: int, size: int, rng: random.Random) -> tuple[int, tuple, bool]:
        """How to make image i's view, before decoding anything: (stored level to decode, crop
        box (x, y, w, h) in that level's pixels, flip or not). Every backend draws from the
        same rng in the same order, so they all produce the same stream."""
        ws, hs = self.split.widths[i], self.split.heights[i]  # (levels,)
        if self.train:
            box = random_resized_crop(rng, int(ws[0]), int(hs[0]), self.scale_min)
        else:
            box = center_crop(int(ws[0]), int(hs[0]), size)
        level = best_level(ws, hs, box, size)
        fx, fy = ws[level] / ws[0], hs[level] / hs[0]
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        return level, box, self.train and self.hflip and rng.random() < 0.5

    def view(self, i: int, size: int, rng: random.Random) -> np.ndarray:
        """Image i as (size, size, 3) uint8: augmented for training, centre view otherwise."""
        level, box, flip = self.plan(i, size, rng)
        out = crop_resize(self.split.image(i, level), box, size)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)  # PIL's flip: 10x a reversed numpy copy
        return np.asarray(out)

    def batch(self, keys):
        size = keys[0][1]
        x = torch.empty(len(keys), 3, size, size, dtype=torch.uint8)  # (B, 3, S, S)
        if get_worker_info() is not None:
            # Straight into shared memory: sending the batch to the trainer then copies nothing
            # (a fresh page costs ~6 us to fault in on a VM, as much as a 64 px resize).
            x.share_memory_()
        y = torch.empty(len(keys), dtype=torch.long)
        bad = torch.zeros(len(keys), dtype=torch.long)  # READ, STOOD_IN, NO_IMAGE per image
        out, n = x.numpy(), len(self.split)
        for k, (idx, _, epoch) in enumerate(keys):
            rng = self.rng(idx, epoch)
            img, j, bad[k] = read_or_stand_in(lambda j: self.view(j, size, rng), idx, n,
                                              self.train)
            # (S, S, 3) -> (3, S, S), numpy's copy being the faster; for no image, zeros, which
            # evaluation leaves out and training refuses
            out[k] = 0 if img is None else img.transpose(2, 0, 1)
            y[k] = int(self.split.labels[j])
        return x, y, bad

    __getitems__ = batch  # a DataLoader hands its batch sampler's whole list of keys here


def _whole(batch):
    return batch  # CacheDataset.batch already made the whole batch


class CacheData(WorkerStream):
    collate = staticmethod(_whole)

    def __init__(self, root: str, *, batch_size: int, seed: int, aug, device, num_workers: int,
                 rank: int = 0, world: int = 1, size: int = 224, holdout: float = 0.0):
        self.train_split = CacheSplit(root, "train")
        if holdout:  # evaluate on a part of train instead (see holdout.py); val is unused
            keep, held = holdout_rows(len(self.train_split), holdout)
            self.train_split, self.val_split = (self.train_split.subset(keep),
                                                self.train_split.subset(held))
            self.eval_split = describe(holdout, len(held))
        else:
            self.val_split, self.eval_split = CacheSplit(root, "val"), "val"
        meta = self.train_split.meta
        self.classes, self.num_classes, self.in_chans = meta["classes"], meta["num_classes"], 3
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.notes = []
        if meta["bad_files"]:
            self.notes.append(f"note: {meta['bad_files']} files of the tree were left out by "
                              f"prepare (listed in {Path(root) / BAD_FILES})")
        view = round(size / EVAL_CROP)  # the shorter side evaluation resizes to
        if meta["max_size"] < view:
            self.notes.append(
                f"warning: the cache's images are at most {meta['max_size']} px on their "
                f"shorter side, and evaluation at {size} px resizes them to {view} px: they "
                f"are upsampled (prepare the cache with --max-size {view} or more)")
        super().__init__(len(self.train_split), batch_size=batch_size, seed=seed, device=device,
                         num_workers=num_workers, rank=rank, world=world, size=size)
        self.dataset = CacheDataset(self.train_split, True, aug.crop_scale_min, aug.hflip, seed)
        self.aug = aug

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch: (uint8 (b, 3, S, S), labels (b,))."""
        epoch, batch = self.epoch, self.batch
        x, y = to_device(*self.next_from_workers(), self.device)
        ops = self.aug.randaugment_ops
        if ops:
            # On the device, every image its own ops, drawn from the position: the same
            # stream on resume and at any world size.
            u = self.batch_draws(epoch, batch, 2 * ops)
            x = augment.randaugment(x, ops, self.aug.randaugment_magnitude, u)
        return x, y

    def eval_dataset(self) -> CacheDataset:
        return CacheDataset(self.val_split, False, 1.0, False, self.seed)

    def train_file(self, i: int) -> str:
        """Where training image i is (its record keeps no file name)."""
        s = self.train_split
        return f"in {s.root / shard_name('train', int(s.shards[i]))} at byte {s.offsets[i, 0]}"
