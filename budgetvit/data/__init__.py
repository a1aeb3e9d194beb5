"""Datasets behind one interface: set_size, next_batch, eval_batches, state_dict.

next_batch() returns this rank's share of the next global batch on the device, as uint8 or
float in [0, 1]; the trainer normalises. The data position (epoch, batch) is the state."""
from __future__ import annotations

import os

from ..config import ConfigError

# Each loader is imported where asked for: the command line imports this package for
# `budgetvit prepare`'s options (no torch needed), and the tree and cache loaders need torchvision,
# whose import takes ~2 s more (it loads torch._dynamo), which a Fashion-MNIST run would wait for.


def build_data(cfg, device, rank: int = 0, world: int = 1):
    from . import fashion_mnist, synthetic
    from .memory import MemoryData
    d, t = cfg.data, cfg.train
    common = dict(batch_size=t.batch_size, seed=t.seed, aug=cfg.aug, device=device,
                  rank=rank, world=world, holdout=d.holdout)
    if d.dataset == "fashion_mnist":
        return MemoryData(fashion_mnist.load("train", d.path), fashion_mnist.load("test", d.path),
                          classes=fashion_mnist.CLASSES, mean=fashion_mnist.MEAN,
                          std=fashion_mnist.STD, **common)
    if d.dataset == "synthetic":
        k = d.synthetic_classes
        train = synthetic.make(d.synthetic_images, k, seed=1)
        test = synthetic.make(max(d.synthetic_images // 10, k), k, seed=2)
        return MemoryData(train, test, classes=[str(i) for i in range(k)], mean=(0.5,) * 3,
                          std=(0.5,) * 3, **common)
    if d.dataset == "cache":  # made by `budgetvit prepare`; same interface as the tree
        if d.backend == "dali":
            from .dali import DaliData  # optional dependency, imported only when asked for
            return DaliData(d.path, num_workers=d.num_workers,
                            size=cfg.curriculum.final_size_px, **common)
        from .cache_loader import CacheData
        return CacheData(d.path, num_workers=d.num_workers, size=cfg.curriculum.final_size_px,
                         **common)
    from .imagefolder import FolderData
    return FolderData(d.path, num_workers=d.num_workers, size=cfg.curriculum.final_size_px,
                      **common)


def folder_kinds(path: str) -> list[str]:
    """What the folder at `path` is, as data.datasets: "cache" (meta.json, which `budgetvit
    prepare` writes last), "imagefolder" (an image tree: train/ or val/ folders); both for a
    cache made inside its tree by earlier versions, none for anything else."""
    from .cache import META
    return ([k for k, found in (("cache", os.path.isfile(os.path.join(path, META))),
             ("imagefolder", any(os.path.isdir(os.path.join(path, s)) for s in ("train", "val"))))
             if found])


def eval_dataset(d, path: str) -> str:
    """The data.dataset to read `budgetvit eval --data-path path` as, for a run on data `d`:
    of an image run (a tree or a cache), what the folder is, so a run trained on a cache is
    scored on the tree's original val/ JPEGs (or a tree's run on a cache's val). A run that
    held out part of its training split needs its own kind of data: the holdout is rows of it."""
    kinds = folder_kinds(path) if d.dataset in ("imagefolder", "cache") else []
    if not kinds or d.dataset in kinds:  # (what the run trained on, where the folder is that)
        return d.dataset
    kind = kinds[0]
    if d.holdout:
        what = {"cache": "a budgetvit cache", "imagefolder": "an image tree"}
        raise ConfigError(f"--data-path {path} is {what[kind]}, but the run is evaluated on the "
                          f"{d.holdout:g} of its training images it held out (data.holdout), "
                          f"rows of {what[d.dataset]}: give it {what[d.dataset]}")
    return kind


def build_eval_split(cfg, classes: list[str], device):
    """The evaluation split alone, for `budgetvit eval`: an ImageFolder's val/ labelled by a
    trained model's `classes` (train/ need not exist) or Fashion-MNIST's test files. None where
    the training split is needed too: a holdout is carved from it, and a cache or synthetic
    data are read whole."""
    d = cfg.data
    if d.holdout:
        return None
    from . import fashion_mnist
    from .memory import MemoryEval
    if d.dataset == "imagefolder":
        from .imagefolder import FolderEvalSplit
        return FolderEvalSplit(d.path, classes, seed=cfg.train.seed, device=device,
                               num_workers=d.num_workers)
    if d.dataset == "fashion_mnist":
        return MemoryEval(fashion_mnist.load("test", d.path), classes=fashion_mnist.CLASSES,
                          mean=fashion_mnist.MEAN, std=fashion_mnist.STD, device=device)
    return None
