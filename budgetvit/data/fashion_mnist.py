"""Fashion-MNIST from its IDX files: a given folder, $BUDGETVIT_FMNIST_DIR, Debian's
dataset-fashion-mnist package, or torchvision's download where a network exists. 70k 28x28
grayscale images, 10 classes."""
from __future__ import annotations

import gzip
import os
import socket
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    """IDX format: 2 zero bytes, dtype code 0x08 (uint8), ndim, big-endian dims, raw data.
    A truncated or foreign file (an interrupted copy) is a ConfigError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip: BadGzipFile is an OSError, truncation EOFError
        raise ConfigError(f"cannot read {path} ({e}); copy or install it again") from None
    header = 4 + 4 * data[3] if len(data) > 3 else 4  # (too short for a header: refused)
    if data[:3] != b"\x00\x00\x08" or len(data) < header:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file")
    dims = np.frombuffer(data, ">u4", count=data[3], offset=4).astype(int)
    if len(data) - header != int(np.prod(dims)):
        raise ConfigError(f"{path} holds {len(data) - header} bytes of data, its header says "
                          f"{'x'.join(map(str, dims))}: truncated? copy or install it again")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / (stem + ".gz"), root / "FashionMNIST" / "raw" / stem):
        if candidate.exists():
            return candidate
    return None


DOWNLOAD_TIMEOUT_S = 30.0


def _download(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST
    # torchvision opens its URLs with no timeout: where a firewall drops packets instead of
    # refusing them, the download would wait forever rather than fail with the advice below.
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        ds = FashionMNIST(str(Path.home() / ".cache" / "budgetvit"), train=split == "train",
                          download=True)
    finally:
        socket.setdefaulttimeout(before)
    return ds.data.unsqueeze(1).clone(), ds.targets.clone()


def load(split: str, root: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of split 'train' or 'test'."""
    given = root or os.environ.get("BUDGETVIT_FMNIST_DIR")
    folder = Path(given or DEBIAN_ROOT)
    images, labels = (_find(folder, stem) for stem in FILES[split])
    if images and labels:
        x = torch.from_numpy(_read_idx(images).copy()).unsqueeze(1)
        y = torch.from_numpy(_read_idx(labels).astype(np.int64))
        if len(x) != len(y):
            raise ConfigError(f"{images} holds {len(x)} images but {labels} {len(y)} labels")
        return x, y
    if given:  # a folder named on purpose: no download elsewhere
        where = root or f"{given} ($BUDGETVIT_FMNIST_DIR)"
        raise FileNotFoundError(f"no Fashion-MNIST {split} files ({FILES[split][0]}[.gz]) in "
                                f"{where}")
    try:
        return _download(split)
    except Exception as e:  # no network: say how to get the data instead
        why = " ".join(str(e).split())  # torchvision's message spans lines: the error is one
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} and could not be downloaded ({why}); "
            f"install it with: apt-get install dataset-fashion-mnist") from None
