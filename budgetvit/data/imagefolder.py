"""ImageNet-style ImageFolder trees (`root/train/<class>/*.jpg`, `root/val/<class>/*`), decoded
per image in DataLoader worker processes with torchvision.transforms.v2.

The image size changes during training, so the batch sampler stamps every index with the current
size; workers crop to that size. A size change restarts the workers at the current position,
dropping the batches they prefetched at the old size. Each image's augmentation is seeded by
(seed, epoch, index), so the stream is a function of the position and the size.
Unreadable images are not fatal: in training the next readable one stands in (counted; only
a long run of them, broken data, stops training), an evaluation leaves them out.
"""
from __future__ import annotations

import errno
import importlib
import sys

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import ConfigError
from .holdout import describe, holdout_rows
from .loader_workers import started, worker_settings
from .sample_table import SampleTable
from .stream import DataStream, loader_generator, mix_seed
from .tree import default_workers, first_names, open_rgb, readable, scan

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_CROP = 0.875  # evaluation: resize the shorter side to size / 0.875, centre-crop size


def eval_transform(size: int):
    """PIL image -> uint8 (C, size, size), the centre view evaluation (and predict) sees."""
    from torchvision.transforms import v2
    return v2.Compose([v2.Resize(round(size / EVAL_CROP)), v2.CenterCrop(size), v2.PILToTensor()])


class FolderDataset(Dataset):
    def __init__(self, samples: SampleTable, train: bool, aug, seed: int):
        # (a table, not a list: read by every worker, a list would be copied into each)
        self.samples, self.train, self.aug, self.seed = samples, train, aug, seed
        # Imported here, in the trainer: forked workers inherit it, where each would import it
        # (2 s) at every loader start, every size change and evaluation.
        importlib.import_module("torchvision.transforms.v2")

    def __len__(self) -> int:
        return len(self.samples)

    def transform(self, size: int):
        if not self.train:
            return eval_transform(size)
        from torchvision.transforms import v2
        a = self.aug
        steps = [v2.RandomResizedCrop(size, scale=(a.crop_scale_min, 1.0), antialias=True)]
        if a.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if a.randaugment_ops:
            steps.append(v2.RandAugment(a.randaugment_ops, a.randaugment_magnitude))
        return v2.Compose(steps + [v2.PILToTensor()])

    def __getitem__(self, key):
        idx, size, epoch = key
        img, j, bad = read_or_stand_in(lambda j: open_rgb(self.samples[j][0]), idx,
                                       len(self.samples), self.train)
        if img is None:  # a placeholder, which evaluation leaves out and training refuses
            return torch.zeros(3, size, size, dtype=torch.uint8), 0, bad
        # v2 transforms draw from the global CPU RNG. Seed it for this image, but on a fork:
        # with 0 workers this runs in the trainer, whose RNG mixup and drop path draw from.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, idx))
            return self.transform(size)(img), self.samples[j][1], bad


class CurriculumBatchSampler:
    """Endless global batches from (epoch, batch) on, this rank's share of each, every index
    stamped with `size`. Epoch e's order is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int,
                 epoch: int, batch: int, size: int):
        self.n, self.global_batch, self.local = n, global_batch, global_batch // world
        self.rank, self.seed, self.epoch, self.batch, self.size = rank, seed, epoch, batch, size
        self.batches_per_epoch = n // global_batch

    def __iter__(self):
        epoch, batch = self.epoch, self.batch
        while True:
            order = self.order(epoch)
            for b in range(batch, self.batches_per_epoch):
                yield [(i, self.size, epoch) for i in self.share(order, b)]
            epoch, batch = epoch + 1, 0

    def order(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(
            mix_seed(self.seed, epoch))).tolist()

    def share(self, order: list[int], b: int) -> list[int]:
        """This rank's images of global batch b of the epoch in `order`."""
        start = b * self.global_batch + self.rank * self.local
        return order[start:start + self.local]


# The third thing a worker returns per image, `bad`: its image was read (READ), or was
# unreadable and the next readable one stands in for it (STOOD_IN, training only), or was
# unreadable with no stand-in (NO_IMAGE: always in evaluation, which leaves it out; in training
# after MAX_STAND_IN_TRIES unreadable images in a row, which stops the run).
READ, STOOD_IN, NO_IMAGE = 0, 1, 2
MAX_STAND_IN_TRIES = 1000  # bounds the search where (nearly) nothing is readable
MAX_NAMED = 20  # unreadable training images named, each once, in a process
# Out of open files or memory: every image would fail alike, and a stand-in would hide it.
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def read_or_stand_in(read, idx: int, n: int, train: bool):
    """(read(j), j, bad) for the first j of idx, idx + 1, ... (mod n) that reads without an
    error: training tries up to MAX_STAND_IN_TRIES images, evaluation only idx itself;
    (None, idx, NO_IMAGE) when none of them reads."""
    for attempt in range(min(MAX_STAND_IN_TRIES if train else 1, n)):
        j = (idx + attempt) % n
        try:
            return read(j), j, (STOOD_IN if attempt else READ)
        except Exception as e:  # truncated, zero-byte, not an image: take the next
            if isinstance(e, MemoryError) or getattr(e, "errno", None) in RESOURCE_ERRORS:
                raise  # the machine's trouble, not the image's
    return None, idx, NO_IMAGE


def _collate(items):
    images, labels, bad = zip(*items)
    return torch.stack(images), torch.tensor(labels), torch.tensor(bad)


def to_device(x: torch.Tensor, y: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (pinned when CUDA) onto the device, without waiting for the copy."""
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class WorkerEval:
    """An evaluation split decoded by DataLoader workers. Needs self.workers, seed, device,
    collate and eval_dataset() (images keyed by (index, size, 0))."""
    collate = staticmethod(_collate)  # the workers' items -> (x, y, bad: READ, STOOD_IN...)
    # Of the latest eval_batches, for evaluate(): unreadable images left out (not counted in
    # bad_images, training's count, which every evaluation would add to) and the first one's
    # file, where there is one.
    left_out, left_out_file = 0, None
    left_out_said = 0  # the count warn_left_out said last

    def eval_batches(self, size: int, batch_size: int, rank: int = 0, world: int = 1):
        """This rank's share of the evaluation split (every image once over all ranks), centre
        view: yields (uint8 (b, 3, size, size), labels (b,)) on the device."""
        ds = self.eval_dataset()
        keys = [(i, size, 0) for i in range(rank, len(ds), world)]
        batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
        loader = DataLoader(ds, batch_sampler=batches, collate_fn=self.collate,
                            pin_memory=torch.cuda.is_available(),
                            generator=loader_generator(self.seed),
                            **worker_settings(min(self.workers, len(batches))))
        self.left_out, self.left_out_file = 0, None
        # (the loader runs out, not a zip with `batches`: its workers then end here, not in
        # its __del__, where a stop signal's exception would be lost)
        for i, (x, y, bad) in enumerate(started(loader)):
            if bad.any():  # unreadable images are left out (a stand-in would score another twice)
                keep = bad == READ
                if self.left_out_file is None:
                    first = int((~keep).nonzero()[0, 0])  # its place in this batch
                    self.left_out_file = self.eval_file(batches[i][first][0])
                self.left_out += len(y) - int(keep.sum())
                x, y = x[keep], y[keep]
            if len(y):
                yield to_device(x, y, self.device)

    def warn_left_out(self, count: int) -> None:
        """Say on stderr that `count` unreadable images were left out (over all ranks; the file
        is this rank's), unless that count was the last said: a run evaluates again and again,
        `budgetvit eval` each model at each size."""
        if count != self.left_out_said:
            self.left_out_said = count
            images = "image" if count == 1 else "images"
            where = (f" ({self.left_out_file}{' and others' if count > 1 else ''})"
                     if self.left_out_file else "")
            # (through tqdm: a training run's progress bar is redrawn below the line)
            tqdm.write(f"warning: {count} unreadable {images} in the evaluation split left "
                       f"out{where}", file=sys.stderr)

    def eval_file(self, i: int) -> str | None:
        """The file of evaluation image i, to name it (a cache's records keep no file name)."""
        return None

    def eval_dataset(self) -> Dataset:
        raise NotImplementedError


class WorkerStream(DataStream, WorkerEval):
    """A stream decoded per image by DataLoader workers (ImageFolder, the cache): the batch
    sampler carries the position and the current size to them. A subclass sets self.dataset
    (training images, keyed by (index, size, epoch)), eval_dataset() and collate."""
    prefetch_factor = 2  # batches each worker prepares ahead (DataLoader's prefetch_factor)

    def __init__(self, num_images: int, *, batch_size: int, seed: int, device,
                 num_workers: int, rank: int, world: int, size: int):
        super().__init__(num_images, batch_size, seed, device, rank, world, size)
        self.workers = default_workers(num_workers)
        self._it = None  # the running loader's batches
        self.named: set[int] = set()  # unreadable training images said (name_unreadable)
        self._order = (-1, [])  # (epoch, its order), once an unreadable image is met

    @property
    def prefetch_batches(self) -> int:
        return self.workers * self.prefetch_factor

    def set_size(self, size: int) -> None:
        if size != self.size:
            # Restart the workers here: batches they prefetched at the old size would be
            # trained as the new one, and their number depends on when the loader started
            # (a resume at a stage boundary would not be exact).
            self.close()
        super().set_size(size)

    def close(self) -> None:
        """End the running loader's workers now (the next batch starts new ones). Left to the
        garbage collector, a stop signal's exception raised during their shutdown is lost (in
        __del__). (Not at the end of a run: called then, the process sometimes aborted at exit,
        "terminate called without an active exception", torch 2.14 on CPU.)"""
        shutdown = getattr(self._it, "_shutdown_workers", None)  # (none without workers)
        if shutdown is not None:
            shutdown()
        self._it = None

    def sampler(self) -> CurriculumBatchSampler:
        """A fresh sampler starting at the current position."""
        return CurriculumBatchSampler(self.num_images, self.global_batch, self.rank, self.world,
                                      self.seed, self.epoch, self.batch, self.size)

    def next_from_workers(self):
        """The workers' next (x, y, bad) batch, counting bad images and the position."""
        if self._it is None:
            self._it = started(self.make_loader())
        x, y, bad = next(self._it)
        if (bad == NO_IMAGE).any():
            raise ConfigError(f"{min(MAX_STAND_IN_TRIES, self.num_images)} unreadable training "
                              f"images in a row: is the data intact (an interrupted copy, "
                              f"git-lfs pointers)?")
        stood_in = bad == STOOD_IN
        if stood_in.any():
            self.bad_images += int(stood_in.sum())
            if len(self.named) < MAX_NAMED:
                self.name_unreadable(stood_in)
        self.advance()
        return x, y

    def name_unreadable(self, stood_in: torch.Tensor) -> None:
        """Say each unreadable image of the batch at the current position the first time this
        process meets it (the first MAX_NAMED: the summary's count names no file), and that
        the next readable one stands in for it."""
        sampler = self.sampler()
        if self._order[0] != self.epoch:  # (the epoch's order: a permutation of every image)
            self._order = (self.epoch, sampler.order(self.epoch))
        images = sampler.share(self._order[1], self.batch)
        for k in stood_in.nonzero().flatten().tolist():
            if images[k] in self.named or len(self.named) == MAX_NAMED:
                continue
            self.named.add(images[k])
            more = " (further ones are counted, not named)" if len(self.named) == MAX_NAMED else ""
            tqdm.write(f"warning: unreadable training image {self.train_file(images[k])}: the "
                       f"next readable one stands in for it, each epoch{more}", file=sys.stderr)

    def train_file(self, i: int) -> str:
        """Training image i, as a warning names it."""
        return f"{i} of the training images"

    def make_loader(self) -> DataLoader:
        """Workers making this rank's batches from the current position on."""
        return DataLoader(self.dataset, batch_sampler=self.sampler(),
                          collate_fn=self.collate, pin_memory=torch.cuda.is_available(),
                          generator=loader_generator(self.seed, self.epoch, self.batch,
                                                     self.rank),
                          **worker_settings(self.workers), persistent_workers=self.workers > 0,
                          prefetch_factor=self.prefetch_factor if self.workers > 0 else None)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(*self.next_from_workers(), self.device)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.close()  # restart the workers from the loaded position


class TreeEval(WorkerEval):
    """The evaluation split of an image tree: its files (self.val_samples) decoded per image."""

    def eval_file(self, i: int) -> str:
        return self.val_samples[i][0]

    def eval_dataset(self) -> FolderDataset:
        return FolderDataset(self.val_samples, False, None, self.seed)


def classes_without_images(val: list, classes: list[str]) -> tuple[str, ...]:
    """A note where val/ holds no image of some classes (a class folder left out of a copy)."""
    have = {label for _, label in val}
    missing = [c for i, c in enumerate(classes) if i not in have]
    if not missing:
        return ()
    return (f"note: val/ has no image of {len(missing)} of the {len(classes)} classes "
            f"({first_names(missing)}): top-1 and top-5 are over the others",)


class FolderData(WorkerStream, TreeEval):
    prefetch_factor = 4  # per-image JPEG decoding: a deeper queue evens out slow images

    def train_file(self, i: int) -> str:
        return self.dataset.samples[i][0]

    def __init__(self, root: str, *, batch_size: int, seed: int, aug, device, num_workers: int,
                 rank: int = 0, world: int = 1, size: int = 224, holdout: float = 0.0):
        train, self.classes, class_to_idx = scan(root, "train")
        if holdout:  # evaluate on a part of train/ instead (see holdout.py); val/ is unused
            keep, held = holdout_rows(len(train), holdout)
            train, val = [train[i] for i in keep], [train[i] for i in held]
            self.eval_split = describe(holdout, len(held))
        else:
            val, _, _ = scan(root, "val", class_to_idx)
            self.eval_split, self.notes = "val", classes_without_images(val, self.classes)
        self.val_samples = SampleTable(val)
        # Found now rather than at the first evaluation, maybe hours into the budget. Stops at
        # the first image that opens: one decode where the split is sound.
        if not any(readable(path) for path, _ in self.val_samples):
            raise ConfigError(f"no readable image in the evaluation split of {root} "
                              f"({self.eval_split}, {len(self.val_samples)} files)")
        self.num_classes, self.in_chans = len(self.classes), 3
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        super().__init__(len(train), batch_size=batch_size, seed=seed, device=device,
                         num_workers=num_workers, rank=rank, world=world, size=size)
        self.dataset = FolderDataset(SampleTable(train), True, aug, seed)


class FolderEvalSplit(TreeEval):
    """The val/ split of a tree alone, labelled by a trained model's classes: what `budgetvit
    eval` reads (train/ need not exist; val/ may hold some of the classes)."""

    def __init__(self, root: str, classes: list[str], *, seed: int, device, num_workers: int):
        self.classes, self.seed, self.device = list(classes), seed, device
        self.workers = default_workers(num_workers)
        val, _, _ = scan(root, "val", {c: i for i, c in enumerate(classes)},
                         lacks="the checkpoint's classes lack")
        self.val_samples, self.notes = SampleTable(val), classes_without_images(val, classes)
        self.eval_split, self.mean, self.std = "val", IMAGENET_MEAN, IMAGENET_STD
