"""Datasets behind one interface: set_size, next_batch, eval_batches, state_dict.

next_batch() returns this rank's share of the next global batch on the device, as uint8 or
float in [0, 1]; the trainer normalises. The data position (epoch, batch) is the state."""
from __future__ import annotations

# Each loader is imported where asked for: the command line imports this package for
# `budgetvit prepare` (which needs no torch), and the tree and cache loaders need torchvision,
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
