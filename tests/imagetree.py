"""Test trees beyond conftest's Fashion-MNIST ones: natural photos shipped with scikit-image,
every kind of bad file `budgetvit prepare` must survive, and a damaged cache record."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from budgetvit.data import cache

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera"]


def photo(name: str) -> np.ndarray:
    import skimage.data
    img = getattr(skimage.data, name)()
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]


def add_photos(root, split: str, cls: str, count: int) -> None:
    """root/split/cls/photo_*.jpg: scikit-image's natural images, cropped and resized to sizes
    from 40 px to 640 px wide, portrait and landscape."""
    folder = root / split / cls
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(split) * 100 + count)
    sizes = [(640, 480), (375, 500), (300, 200), (40, 56), (512, 512), (257, 255)]
    for i in range(count):
        src = photo(PHOTOS[i % len(PHOTOS)])
        h, w = src.shape[:2]
        y, x = rng.integers(0, h // 4), rng.integers(0, w // 4)
        img = Image.fromarray(np.ascontiguousarray(src[y:, x:])).resize(sizes[i % len(sizes)])
        img.save(folder / f"photo_{i:02d}.jpg", quality=90)


def add_bad_files(root, max_pixels_png: int) -> tuple[dict[str, str], list[str]]:
    """Odd and broken files in root/train/coat and root/val/bag. Returns ({relative path:
    expected reason fragment} of the files prepare must skip, [relative paths it must convert]).
    big.png has more than max_pixels_png pixels, the limit the test passes to prepare."""
    train, val = root / "train" / "coat", root / "val" / "bag"
    good = Image.fromarray(photo("chelsea"))
    good.save(train / "cmyk_src.jpg")
    data = (train / "cmyk_src.jpg").read_bytes()
    (train / "cmyk_src.jpg").unlink()
    (train / "truncated.jpg").write_bytes(data[: len(data) * 2 // 5])
    (val / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (train / "empty.jpg").write_bytes(b"")
    (train / "notes.jpg").write_text("not a picture, just text with a .jpg name\n")
    (train / "README.txt").write_text("ignored, like ImageFolder ignores it\n")
    good.convert("CMYK").save(train / "cmyk.jpg", quality=90)
    good.convert("L").save(train / "gray.jpg", quality=90)
    ramp = (np.arange(120 * 90, dtype=np.uint32).reshape(90, 120) * 6).astype(np.uint16)
    Image.fromarray(ramp).save(train / "gray16.png")  # mode I;16
    good.convert("P", palette=Image.Palette.ADAPTIVE).save(train / "palette.png")
    good.convert("RGBA").save(train / "rgba.png")
    # Beyond PIL's decompression-bomb error limit (2 x 89.5 M px): decoded at 1/8 DCT scale.
    ramp = np.broadcast_to((np.arange(15000) // 59).astype(np.uint8), (12000, 15000))
    Image.fromarray(np.ascontiguousarray(ramp)).save(train / "huge.jpg", quality=75)
    side = int(max_pixels_png ** 0.5) + 10
    Image.new("RGB", (side, side), (90, 120, 30)).save(train / "big.png")
    skipped = {"train/coat/truncated.jpg": "unreadable", "val/bag/truncated.jpg": "unreadable",
               "train/coat/empty.jpg": "empty file", "train/coat/notes.jpg": "not an image",
               "train/coat/big.png": "too large"}
    converted = [f"train/coat/{n}" for n in ("cmyk.jpg", "gray.jpg", "gray16.png",
                                               "palette.png", "rgba.png", "huge.jpg")]
    return skipped, converted


def damaged_copy(src: Path, dst: Path, image: int, split: str = "train") -> Path:
    """A copy of the cache at src with every stored level of one image of `split` zeroed."""
    shutil.copytree(src, dst)
    row = np.load(dst / f"{split}.idx.npy")[image]
    shard = dst / cache.shard_name(split, int(row["shard"]))
    data = bytearray(shard.read_bytes())
    start, end = int(row["offset"][0]), int(row["offset"][-1] + row["nbytes"][-1])
    data[start:end] = bytes(end - start)
    shard.write_bytes(bytes(data))
    return dst
