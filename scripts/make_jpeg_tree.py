#!/usr/bin/env python
"""Write an ImageNet-shaped ImageFolder tree of real JPEGs for benchmarking the input pipeline.

    python scripts/make_jpeg_tree.py /tmp/jpeg-tree --train 5000 --val 500

OUT/{train,val}/<class>/<class>_<index>.JPEG, one class per natural image shipped with
scikit-image (astronaut, chelsea, coffee, rocket, ...). Every file is a random crop of its
source (area 25-100%), resized to about 500x375 (a quarter of them portrait, aspect 1.2-1.5
like ImageNet's), flipped, colour-jittered (brightness, contrast, saturation, white balance) and
given a little sensor grain, then saved at JPEG quality 90. The grain matters: without it the
upscaled crops compress to a third of a real photo's bytes and decode faster than ImageNet
files would, which flatters any decode-bound pipeline.

Deterministic: file i depends only on (--seed, split, i), whatever --workers is. Files that
already exist are skipped, so an interrupted run can simply be rerun. Without scikit-image,
--sources DIR takes the source photos from a folder instead (one class per file, named by its
stem; e.g. a copy of scikit-image's skimage/data folder).
"""
from __future__ import annotations

import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

# Natural images that scikit-image ships in its wheel (no download); grayscale ones get colour
# from the jitter. --classes K takes the first K (colour photos first); the tree's class order
# is their sorted names, as ImageFolder sorts folders.
SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
           "immunohistochemistry", "retina", "camera", "coins", "grass", "gravel", "moon"]

_cache: dict[str, np.ndarray] = {}
_files: dict[str, str] = {}  # class name -> photo file, with --sources


def source(name: str) -> np.ndarray:
    """(H, W, 3) uint8 of one source photo, loaded once per process."""
    if name not in _cache:
        if name in _files:
            img = np.asarray(Image.open(_files[name]).convert("RGB"))
        else:
            import skimage.data
            img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
            img = img[0]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        _cache[name] = np.ascontiguousarray(img[:, :, :3])
    return _cache[name]


def make_image(name: str, rng: np.random.Generator) -> Image.Image:
    """One ~500x375 photo-like RGB image derived from a scikit-image sample."""
    src = source(name)
    H, W = src.shape[:2]
    aspect = rng.uniform(1.2, 1.5)
    out_w, out_h = 500, int(round(500 / aspect))
    if rng.random() < 0.25:
        out_w, out_h = out_h, out_w
    # Crop with the output's aspect ratio, 25-100% of the largest such crop.
    share = np.sqrt(rng.uniform(0.25, 1.0))
    crop_w = min(W, H * out_w / out_h) * share
    crop_h = crop_w * out_h / out_w
    x0, y0 = rng.uniform(0, W - crop_w), rng.uniform(0, H - crop_h)
    img = Image.fromarray(src).resize((out_w, out_h), Image.BICUBIC,
                                      box=(x0, y0, x0 + crop_w, y0 + crop_h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
    x = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15, size=3)  # white balance
    x += rng.normal(0.0, rng.uniform(6.0, 10.0), size=x.shape).astype(np.float32)  # grain
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def write_one(job: tuple[str, int, int, int, str, int, dict]) -> int:
    out, split_id, index, seed, name, quality, files = job
    _files.update(files)
    path = Path(out)
    if path.exists():
        return 0
    rng = np.random.default_rng([seed, split_id, index])
    tmp = path.with_name(path.name + ".tmp")
    make_image(name, rng).save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)  # a killed run never leaves a half-written image behind
    return 1


def jobs(root: Path, counts: dict[str, int], classes: list[str], seed: int, quality: int,
         files: dict[str, str]):
    for split_id, (split, count) in enumerate(counts.items()):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = classes[i % len(classes)]
            path = root / split / name / f"{name}_{i:06d}.JPEG"
            yield str(path), split_id, i, seed, name, quality, files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="root of the tree to write")
    p.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    p.add_argument("--val", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--classes", type=int, default=10,
                   help=f"at most {len(SOURCES)} (or the number of --sources photos)")
    p.add_argument("--sources", help="folder of source photos (default: scikit-image's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    files = {}
    if a.sources:
        exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
        files = {f.stem: str(f) for f in sorted(Path(a.sources).iterdir())
                 if f.suffix.lower() in exts}
    names = sorted(files) if files else SOURCES
    if not 2 <= a.classes <= len(names):
        p.error(f"--classes must be in [2, {len(names)}]")
    classes = sorted(names[:a.classes])
    root = Path(a.out)
    todo = list(jobs(root, {"train": a.train, "val": a.val}, classes, a.seed, a.quality, files))
    with Pool(a.workers) as pool:
        written = sum(pool.imap_unordered(write_one, todo, chunksize=64))
    total = sum(f.stat().st_size for f in root.rglob("*.JPEG"))
    print(f"{root}: {len(todo)} JPEGs ({written} written now), {len(classes)} classes, "
          f"{total / 2**20:.1f} MiB, mean {total / max(len(todo), 1) / 1024:.0f} KiB per file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
