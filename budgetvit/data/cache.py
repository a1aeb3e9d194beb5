"""The on-disk image cache: what `budgetvit prepare` writes and CacheData reads.

    CACHE/meta.json              classes, counts, encoding, max_size, prepare_time_s, cache_bytes
    CACHE/train-00000.bin ...    shards: encoded images back to back, memory-mapped to read
    CACHE/train.idx.npy          one index_dtype() row per image, in ImageFolder order
    CACHE/val-00000.bin, val.idx.npy   (when the source tree has val/)
    CACHE/bad_files.tsv          source files left out: relative path <TAB> reason (escaped)
    CACHE/parts/                 one index part + receipt per finished shard (makes it resumable),
                                 elapsed.json: seconds spent by all runs so far

Each image is stored with the shorter side at most S (--max-size) and, by default, as two more
copies at 1/2 and 1/4 of that size ("levels"), as baseline RGB JPEG (quality 90, 4:2:0), or
optionally raw uint8 HWC. The loader decodes the smallest copy that still holds the crop it
needs. Chosen by measurement (`budgetvit bench-data`, 2-core AMD EPYC shared with other jobs,
2 workers, batch 128, crop scale (0.08, 1), the 5000-image 500x375 tree of
scripts/make_jpeg_tree.py, S = 256): images per CPU-second of the pipeline, as a multiple of
the plain torchvision ImageFolder pipeline on the source JPEGs (275-360 img/CPU-s at 64 px)
measured in the same run; bytes per image in the cache:

    stored as               bytes/img   64 px   128 px   224 px
    JPEG q90, 1 level        28 KiB     2.7x    1.9x     1.9x    (draft() only)
    JPEG q90, 3 levels       39 KiB     4.2x    2.2x     1.7x    (default)
    raw uint8, 1 level      260 KiB     4.3x    4.0x     3.0x
    raw uint8, 3 levels     341 KiB     6.6x    4.2x     2.9x

Raw is faster (no decode), but 7-9x bigger: at these bytes per image ImageNet-1k would take
~320-420 GB raw against ~50 GB as 3-level JPEG, so raw no longer fits in the page cache of a
typical GPU box and its loader becomes disk-bound, while the JPEG cache is read from RAM.
JPEG's DCT scaling (PIL's draft()) saves less than hoped (a 256 px JPEG decodes at 1/8 scale
in ~70% of its full-scale time: entropy decoding, which scaling cannot skip, dominates), hence
the pre-resized copies: +40% bytes, 1.5x at 64 px. At 224 px every image needs the full
copy; there the gain is the smaller stored image (256 px vs ~375 px shorter side). q85 would
save another ~23% of bytes for a few % of speed; q90 was kept for quality; optimize=True
Huffman tables gained nothing measurable. Raw stays available (`prepare --format raw`) for
datasets whose raw cache fits in memory.
"""
from __future__ import annotations

import copy
import io
import json
import mmap
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import ConfigError

FORMAT_VERSION = 1
ENCODINGS = ("jpeg", "raw")
JPEG_QUALITY = 90
META, BAD_FILES, PARTS = "meta.json", "bad_files.tsv", "parts"
ELAPSED = "elapsed.json"  # in parts/: wall seconds of every prepare run so far

LEVELS = 3  # stored copies per image: shorter side <= S, S/2, S/4 (see the docstring)


def index_dtype(levels: int) -> np.dtype:
    """One row per cached image. For each level l: offset/nbytes locate the record in the
    shard, height/width are its size (so a crop and a level can be chosen before decoding).
    source is the image's position in the sorted ImageFolder listing of its split (links every
    record back to its file and label)."""
    return np.dtype([("shard", "<u4"), ("label", "<i4"), ("source", "<u4"),
                     ("offset", "<u8", (levels,)), ("nbytes", "<u4", (levels,)),
                     ("height", "<u2", (levels,)), ("width", "<u2", (levels,))])


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.bin"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync, rename: a killed run leaves either nothing or the whole file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode(img: Image.Image, encoding: str) -> bytes:
    """Bytes of one RGB image as stored in a shard."""
    if encoding == "raw":
        return img.tobytes()  # (H, W, 3) uint8, row-major
    buf = io.BytesIO()
    # Baseline (not progressive) JPEG: faster to decode, and draft() can scale it.
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    return buf.getvalue()


def decoder(record: memoryview, encoding: str, height: int, width: int) -> Image.Image:
    """A PIL image over one record. For JPEG only the header is parsed here, so the caller can
    still pick a reduced decoding scale with draft(); raw records are wrapped without a copy."""
    if encoding == "jpeg":
        return Image.open(io.BytesIO(record))
    return Image.frombuffer("RGB", (width, height), record, "raw", "RGB", 0, 1)


def split_counts(meta: dict) -> str:
    """Images per split of a cache's meta, e.g. '44 train + 12 val' (train only: '44 train')."""
    return " + ".join(f"{n['images']} {split}" for split, n in meta["splits"].items())


def read_meta(root: str | Path) -> dict:
    path = Path(root) / META
    if not path.is_file():
        if (Path(root) / "train").is_dir():  # an image tree: the cache of it goes elsewhere
            raise FileNotFoundError(f"{root} is an image tree (train/), not a budgetvit cache; "
                                    f"make a cache of it with: budgetvit prepare --src {root} "
                                    f"--dst ANOTHER_FOLDER")
        raise FileNotFoundError(f"no finished budgetvit cache at {root} (expected {path}; "
                                f"create it with: budgetvit prepare --src TREE --dst {root})")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{root} holds cache format {meta.get('format_version')}, this "
                          f"version reads {FORMAT_VERSION}: prepare it again")
    return meta


class CacheSplit:
    """The images of one split: random access to each level of each image, its label and its
    stored sizes. Shards are memory-mapped lazily in each process that reads, so an instance
    can be pickled into DataLoader workers before any file is opened."""
    # Each map holds its shard's file open: ImageNet's 1,252 shards would pass the usual limit
    # of 1,024 open files per process (each worker reads every shard in an epoch).
    max_open_shards = 256

    def __init__(self, root: str | Path, split: str):
        self.root, self.split = Path(root), split
        self.meta = read_meta(root)
        if split not in self.meta["splits"]:  # prepared from a tree without that folder
            raise ConfigError(f"the cache {root} has no {split} split (its source tree had no "
                              f"{split}/): to evaluate on a part of train instead, train with "
                              f"--set data.holdout=0.1; or prepare it again from a tree with "
                              f"{split}/")
        self.encoding, self.levels = self.meta["encoding"], self.meta["levels"]
        self.index = np.load(self.root / f"{split}.idx.npy")  # (N,) index_dtype(levels)
        # Plain columns: reading a field of one structured row costs microseconds each.
        self.labels = self.index["label"].astype(np.int64)  # (N,)
        self.shards = self.index["shard"].astype(np.int64)  # (N,)
        self.offsets = self.index["offset"].astype(np.int64)  # (N, levels)
        self.nbytes = self.index["nbytes"].astype(np.int64)  # (N, levels)
        self.widths = self.index["width"].astype(np.int64)  # (N, levels)
        self.heights = self.index["height"].astype(np.int64)  # (N, levels)
        self._maps: dict[int, memoryview] = {}
        self._check_shards()

    def _check_shards(self) -> None:
        """Every shard the index names holds its records: a missing or truncated one (a copy
        cut short) is a broken cache, not a few damaged images to stand in for."""
        if not len(self.index):
            return
        need = np.zeros(self.shards.max() + 1, dtype=np.int64)  # bytes each shard must hold
        np.maximum.at(need, self.shards, (self.offsets + self.nbytes).max(axis=1))
        for k in np.unique(self.shards):
            path = self.root / shard_name(self.split, int(k))
            size = path.stat().st_size if path.is_file() else None
            if size is None or size < need[k]:
                found = "is missing" if size is None else f"holds {size} of {need[k]} bytes"
                raise ConfigError(f"the cache {self.root} is damaged: {path.name} {found}; "
                                  f"run budgetvit prepare again (the same --src and --dst) "
                                  f"to make it anew")

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, rows: np.ndarray) -> "CacheSplit":
        """These images restricted to `rows` (in that order); the shards are shared."""
        part = copy.copy(self)
        for name in ("index", "labels", "shards", "offsets", "nbytes", "widths", "heights"):
            setattr(part, name, getattr(self, name)[rows])
        part._maps = {}
        return part

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}  # maps do not travel; each worker opens its own

    def _shard(self, k: int) -> memoryview:
        # mmap + memoryview rather than np.memmap: slicing a memmap builds an array subclass
        # per record, ~20x the cost of a memoryview slice.
        view = self._maps.pop(k, None)
        if view is None:
            if len(self._maps) >= self.max_open_shards:
                # The least recently read: it closes (munmap, and the file mmap holds open)
                # once no record sliced from it is still in use.
                del self._maps[next(iter(self._maps))]
            with open(self.root / shard_name(self.split, k), "rb") as f:
                view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        self._maps[k] = view  # dicts keep insertion order: the newest read goes last
        return view

    def record(self, i: int, level: int = 0) -> memoryview:
        """The stored bytes of level `level` of image i (no copy)."""
        start = int(self.offsets[i, level])
        return self._shard(int(self.shards[i]))[start:start + int(self.nbytes[i, level])]

    def image(self, i: int, level: int = 0) -> Image.Image:
        """Level `level` of image i, lazily decoded (see decoder())."""
        return decoder(self.record(i, level), self.encoding, int(self.heights[i, level]),
                       int(self.widths[i, level]))


def cache_bytes(root: str | Path) -> int:
    """Bytes the cache occupies: shards, indexes, report and parts (meta.json and elapsed.json
    excluded: they describe the run, and the figure written into meta.json must not depend on
    itself)."""
    root = Path(root)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()
               and f.name not in (META, ELAPSED) and not f.name.endswith(".tmp"))
