"""Shared helpers: tiny configs on real Fashion-MNIST, real JPEG ImageFolder trees, and the
caches `budgetvit prepare` makes of them (for the cache and DALI tests)."""
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from budgetvit.config import apply_overrides
from budgetvit.presets import fmnist

FMNIST = Path(os.environ.get("BUDGETVIT_FMNIST_DIR") or "/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(  # (the trainer reads the files unpacked too)
    not any(FMNIST.glob("train-images-idx3-ubyte*")),
    reason="apt-get install dataset-fashion-mnist")


def tiny_config(*overrides: str):
    """A model small enough that a test trains it in seconds on 2 cores (on the CPU, also on
    a machine with a GPU: the CUDA tests ask for it)."""
    cfg = fmnist()
    apply_overrides(cfg, ["train.device=cpu", "model.dim=32", "model.depth=2", "model.heads=2",
                          "train.batch_size=64", "train.eval_batch_size=1000",
                          "train.warmup_steps=1", "train.log_every=5",
                          "curriculum.stages=16:0.5,28:0.5", *overrides])
    return cfg


def crash_at_step(cfg, out, step: int) -> None:
    """Train until a simulated crash as step `step` begins (what a kill would leave)."""
    from budgetvit.train import Trainer
    crashing = Trainer(cfg, out)
    real_step = crashing.step

    def step_then_crash(*a, **kw):
        if crashing.clock.steps == step:
            raise RuntimeError("simulated crash")
        return real_step(*a, **kw)
    crashing.step = step_then_crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run()


def fmnist_images(n: int, split: str = "test"):
    from budgetvit.data import fashion_mnist
    x, y = fashion_mnist.load(split)
    return x[:n, 0].numpy(), y[:n].tolist()


def write_image_tree(root: Path, per_class_train: int = 12, per_class_val: int = 4,
                     classes=("bag", "coat", "sneaker"), sizes=((48, 40), (64, 64), (90, 70))):
    """root/{train,val}/<class>/*.jpg: real Fashion-MNIST images of three classes, written as
    RGB JPEGs at several sizes (labels: Bag=8, Coat=4, Sneaker=7)."""
    wanted = {"bag": 8, "coat": 4, "sneaker": 7}
    images, labels = fmnist_images(2000)
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            picks = [i for i, l in enumerate(labels) if l == wanted[name]]
            offset = 0 if split == "train" else per_class_train
            for j, i in enumerate(picks[offset:offset + count]):
                w, h = sizes[j % len(sizes)]
                img = Image.fromarray(images[i]).convert("RGB").resize((w, h))
                img.save(folder / f"{name}_{j:03d}.jpg", quality=90)
    return root


MAX_PX = 3_000_000  # --max-pixels for the dirty tree: above huge.jpg at 1/8 scale, below big.png


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """(clean tree, dirty tree = clean + bad files, skipped {path: reason}, converted paths).
    Clean: 36 + 8 train and 12 + 3 val images in 4 classes."""
    from .imagetree import add_bad_files, add_photos
    base = tmp_path_factory.mktemp("trees")
    clean = write_image_tree(base / "clean")
    add_photos(clean, "train", "photo", 8)
    add_photos(clean, "val", "photo", 3)
    dirty = base / "dirty"
    shutil.copytree(clean, dirty)
    skipped, converted = add_bad_files(dirty, MAX_PX)
    return clean, dirty, skipped, converted


@pytest.fixture(scope="module")
def caches(trees, tmp_path_factory):
    """(clean cache, dirty cache) of `trees`, JPEG, 64 px, 16 images a shard."""
    from budgetvit.data.prepare import prepare
    clean, dirty = trees[:2]
    base = tmp_path_factory.mktemp("caches")
    prepare(clean, base / "clean", max_size=64, shard_size=16, workers=2, progress=False)
    prepare(dirty, base / "dirty", max_size=64, shard_size=16, workers=2, max_pixels=MAX_PX,
            progress=False)
    return base / "clean", base / "dirty"


# Evaluations on 300 held-out training images instead of the 10000 test images: for tests
# about a run's bookkeeping, not its accuracy.
SMALL_EVAL = ("data.holdout=0.005", "train.ema=false")


def quick(*overrides: str):
    """tiny_config with the small evaluation (SMALL_EVAL)."""
    return tiny_config(*SMALL_EVAL, *overrides)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
