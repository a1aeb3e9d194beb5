"""The files of an image tree (`root/{train,val}/<class>/<image>`): which ones are images of
which class, decoding one to RGB, and how many loader workers a machine gets.

Apart from the loaders (imagefolder.py), which import torch (seconds): the command line
imports `budgetvit prepare`, which needs these alone. The files of a tree follow torchvision
ImageFolder's rules (which suffixes are images, in which order they are listed), without its
import (torch and torchvision take ~4 s to import).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from ..config import ConfigError
from .cache import META


def default_workers(num_workers: int = -1) -> int:
    """Loader workers for data.num_workers: as given, or for -1 one per CPU this process may
    run on (its affinity, which taskset, SLURM and cgroups set), shared among the ranks
    torchrun started on this machine unless each rank was bound to its own CPUs already
    (--numa-binding)."""
    if num_workers >= 0:
        return num_workers
    machine = os.cpu_count() or 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cpus // ranks if cpus * ranks > machine else cpus)


def first_names(names: list[str], limit: int = 10) -> str:
    """The first `limit` names, comma-separated, and " ..." if there are more (for errors)."""
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


# torchvision's IMG_EXTENSIONS, the suffixes its ImageFolder reads (in any case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def visible_image(path: str, below: int) -> bool:
    """Whether path is an image file with no hidden part (a name starting with ".") past its
    first `below` characters: Jupyter's .ipynb_checkpoints/, macOS's ._name.jpg resource forks
    and the like are not data. (Tests on the string: a Path per file, 30x slower, would add
    seconds to the scan of ImageNet's 1.28M files.)"""
    return path.lower().endswith(IMAGE_SUFFIXES) and os.sep + "." not in path[below:]


def class_files(folder: str, class_to_idx: dict) -> list[tuple[str, int]]:
    """[(path, label)] of the images in folder/<class>/, in ImageFolder's order: the classes by
    name, each walked (following links) folder by folder in sorted order, a folder's files by
    name."""
    below = len(folder)  # (the paths start with it, then a separator)
    found = []
    for name in sorted(class_to_idx):
        top = os.path.join(folder, name)
        if not os.path.isdir(top):
            continue
        for where, _, files in sorted(os.walk(top, followlinks=True)):
            paths = (os.path.join(where, f) for f in sorted(files))
            found += [(p, class_to_idx[name]) for p in paths if visible_image(p, below)]
    return found


def scan(root: str | Path, split: str, class_to_idx: dict | None = None,
         lacks: str = "train/ lacks"):
    """[(path, label)] of root/split, and the class list (sorted folder names, from train, or
    those of class_to_idx: a class folder outside them is refused, the error saying that
    "{lacks}: NAMES"). Hidden folders and files are left out."""
    folder = Path(root) / split
    if not folder.is_dir():
        if (Path(root) / META).is_file():  # a cache, given as a tree
            raise FileNotFoundError(f"no {split}/ folder in {root}: it is a budgetvit cache, "
                                    f"not an image tree")
        raise FileNotFoundError(f"no {split}/ folder in {root} (expected {folder}/<class>/<image>)")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if class_to_idx is None:
        if not found:
            raise FileNotFoundError(f"no class folders in {folder}")
        classes, class_to_idx = found, {c: i for i, c in enumerate(found)}
    else:
        classes = sorted(class_to_idx, key=class_to_idx.get)
        # Images of a class train/ lacks would be dropped unseen (and the score would cover
        # only some of the split): a renamed or extra folder is a mistake to say, not skip.
        extra = [name for name in found if name not in class_to_idx]
        if extra:
            raise ConfigError(f"{folder} has class folders that {lacks}: "
                              f"{first_names(extra)}")
    samples = class_files(str(folder), class_to_idx)
    if not samples:
        raise FileNotFoundError(f"no images in {folder}")
    if split == "train":  # a class never trained on: an output the model cannot learn
        empty = sorted(set(classes) - {classes[label] for _, label in samples})
        if empty:
            raise ConfigError(f"{folder} has class folders with no images: "
                              f"{first_names(empty)}")
    return samples, classes, class_to_idx


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (grayscale, CMYK, 16-bit, float, palette, alpha); loads it."""
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16/32-bit grayscale, any byte order
        # through mode I: point() refuses I;16B (big-endian TIFFs) and I;16L, and converting
        # I;16N straight to L clips it. Mode I also holds 16-bit PNGs: values beyond 16 bits
        # are taken to span the 32-bit range (negatives black), within 16 bits the 16-bit one.
        img = img.convert("I")
        scale = 2 ** 23 if img.getextrema()[1] > 65535 else 256
        img = img.point(lambda v: v / scale).convert("L")
    elif img.mode == "F":  # 32-bit float: 0-1 when no value exceeds 1 (else taken as 0-255);
        if img.getextrema()[1] <= 1.0:  # converted as it is, 0-1 would be clipped to black
            img = img.point(lambda v: v * 255)
        img = img.convert("L")
    return img.convert("RGB")


def open_rgb(path: str, upright: bool = False) -> Image.Image:
    """Decode any PIL-readable file to 8-bit RGB (grayscale, CMYK, 16-bit, palette included).
    upright: turned as its EXIF orientation says, as a photo viewer shows a phone's photo
    (predict); the loaders take images as stored, as torchvision's do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/ICC chatter from odd files is not our business
        with Image.open(path) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img) if upright else img)


def readable(path: str) -> bool:
    try:
        open_rgb(path)
        return True
    except Exception:
        return False
