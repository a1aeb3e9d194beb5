"""An ImageFolder split's [(path, label)] held in three numpy arrays instead of a list.

A DataLoader worker is a fork of the trainer and shares its memory until it writes to it; but
merely reading a Python object writes its reference count, so a worker that reads every item of
a list over an epoch ends up with a private copy of the pages they lie on: for ImageNet's 1.28M
training files about 250 MB per worker, gigabytes over the workers of a machine (the
"memory leak" of PyTorch issue 13246). Reading a numpy array's elements writes nothing of it.
`python scripts/worker_memory.py` measures both.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np


class SampleTable:
    """A read-only sequence of (path, label), as make_dataset gives them, in compact form: the
    paths' bytes end to end, where each ends, and the labels."""

    def __init__(self, samples: Iterable[tuple[str, int]]):
        paths, labels = [], []
        for path, label in samples:
            paths.append(os.fsencode(path))
            labels.append(label)
        self.blob = np.frombuffer(b"".join(paths), dtype=np.uint8)
        self.ends = np.cumsum([len(p) for p in paths], dtype=np.int64)
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[str, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        i %= len(self)
        start = int(self.ends[i - 1]) if i else 0
        return os.fsdecode(self.blob[start:self.ends[i]].tobytes()), int(self.labels[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))
