"""`budgetvit bench-data`: images/s of the input pipeline at each curriculum size, next to the
pipeline users would write with plain torchvision, measured in the same run.

    budgetvit bench-data --src TREE --cache CACHE --sizes 64,128,224 --workers 2

Baseline: torchvision.datasets.ImageFolder(TREE/train) + transforms RandomResizedCrop(size,
scale=(--crop-scale-min, 1)) + RandomHorizontalFlip + PILToTensor, in a DataLoader with the
same batch size and workers (shuffle, pin_memory on CUDA), each batch moved to the device.
Loader: CacheData on --cache (or on --src when it is a cache; DaliData with --backend dali),
else FolderData on the tree, with the same crop scale and flip; its batches arrive on the
device like the baseline's. With --randaugment OPS both add RandAugment (OPS ops, magnitude 9):
per image in the baseline's workers, on the device for the cache.
Every pipeline is started afresh for each size and its first --warmup batches (worker start-up,
first reads, batches that were in flight) are not timed; then --batches batches are. Both
should fit in one epoch: the baseline restarts its workers at every epoch. Baseline and loader
alternate --repeats times per size and the best run of each counts, so a burst of load from
another process hits both alike. Images per CPU-second (the pipeline's processes, from /proc)
are reported next to images per second: they do not depend on what else the machine runs.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import AugSection, ConfigError
from . import cache
from .tree import default_workers

if TYPE_CHECKING:  # (torch is imported where used: `budgetvit --help` imports this module)
    import torch

COMMAND = "bench-data"
RANDAUGMENT_MAGNITUDE = 9  # DeiT's (rand-m9), as in the imagenet presets
HELP = "images/s of the data loader at each image size vs a plain torchvision pipeline"


def add_arguments(p) -> None:
    p.add_argument("--src", required=True,
                   help="ImageFolder tree (train/, val/) or a cache made by budgetvit prepare")
    p.add_argument("--cache", help="cache of the same images (budgetvit prepare --dst)")
    p.add_argument("--sizes", default="64,128,224", help="image sizes (default 64,128,224)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="loader processes, for both pipelines (default: one per usable CPU)")
    p.add_argument("--batch-size", type=int, default=128, help="default: 128")
    p.add_argument("--batches", type=int,
                   help="timed batches per run (default: max(20, 4 x workers))")
    p.add_argument("--warmup", type=int,
                   help="untimed batches first (default: 2 x workers + 1, so that every "
                        "worker is past its start-up and the prefetch queues are settled)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per pipeline and size, the best kept (default: 2)")
    p.add_argument("--crop-scale-min", type=float, default=0.08,
                   help="random-resized-crop area range [s, 1] (default 0.08, torchvision's)")
    p.add_argument("--randaugment", type=int, default=0, metavar="OPS",
                   help="also RandAugment (OPS ops, magnitude 9): per image in the "
                        "baseline's workers, batched on the device in the loader (default 0)")
    p.add_argument("--backend", default="pil", choices=["pil", "dali"],
                   help="how the cache is decoded: PIL worker processes, or NVIDIA DALI "
                        "(--workers threads; on the GPU when there is one)")
    p.add_argument("--skip-baseline", action="store_true", help="time the loader only")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", help="also write the results to this JSON file")


def machine() -> str:
    import torch
    from ..runtime import cpu_model
    text = f"{cpu_model()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def cpu_seconds() -> float:
    """CPU time used so far by this process and its live descendants (the loader workers,
    children of a forkserver where that starts them), from /proc; NaN where there is no
    /proc. Images per CPU-second do not depend on what else the machine runs, images per
    second do."""
    try:
        tick, children, cpu = os.sysconf("SC_CLK_TCK"), {}, {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:  # the process ended meanwhile
                    continue
                # The parent's pid at 1; utime, stime, and those of its reaped children
                # (workers a forkserver ended) at 11-14.
                pid = int(entry.name)
                children.setdefault(int(fields[1]), []).append(pid)
                cpu[pid] = sum(int(f) for f in fields[11:15]) / tick
        total = sum(os.times()[:4])  # this process, and its children that have ended
        todo = [os.getpid()]
        while todo:
            for pid in children.get(todo.pop(), ()):
                total += cpu[pid]
                todo.append(pid)
        return total
    except (OSError, ValueError, AttributeError):
        return float("nan")


def timed(batches, device: torch.device, warmup: int, count: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) over `count` batches of an iterator of (x, y) on the
    device, after `warmup` batches."""
    import torch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        next(batches)
    sync()
    start, cpu, images = time.perf_counter(), cpu_seconds(), 0
    for _ in range(count):
        x, _ = next(batches)
        images += x.shape[0]
    sync()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    # /proc counts CPU time in ticks (10 ms): a very short run can read as zero.
    return images / wall, images / cpu if cpu > 0 else float("nan")


def baseline_batches(tree: Path, size: int, args, device):
    """The plain torchvision pipeline, endlessly: what a user would write first."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms
    steps = [transforms.RandomResizedCrop(size, scale=(args.crop_scale_min, 1.0)),
             transforms.RandomHorizontalFlip()]
    if args.randaugment:
        steps.append(transforms.RandAugment(args.randaugment, RANDAUGMENT_MAGNITUDE))
    tf = transforms.Compose([*steps, transforms.PILToTensor()])
    loader = DataLoader(datasets.ImageFolder(str(tree / "train"), transform=tf),
                        batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def loader_batches(data, size: int):
    data.set_size(size)
    while True:
        yield data.next_batch()


def stand_in_holdout(tree: Path | None, meta: dict | None) -> float:
    """0 where the source has a val split. Else the share of one training image: only training
    batches are timed, but the loaders want an evaluation split, so a train-only source (as
    `prepare` allows) lends them one image as a holdout."""
    if meta is not None:  # a cache
        if "val" in meta["splits"]:
            return 0.0
        return 1 / meta["splits"]["train"]["images"]
    if (tree / "val").is_dir():
        return 0.0
    from .tree import scan
    return 1 / len(scan(str(tree), "train")[0])


def make_loader(tree: Path | None, cache_dir: Path | None, holdout: float, args, device):
    from .cache_loader import CacheData
    from .imagefolder import FolderData
    aug = AugSection(crop_scale_min=args.crop_scale_min, hflip=True,
                     randaugment_ops=args.randaugment,
                     randaugment_magnitude=RANDAUGMENT_MAGNITUDE)
    kind = CacheData if cache_dir is not None else FolderData
    if args.backend == "dali":
        from .dali import DaliData
        kind = DaliData
    try:
        return kind(str(cache_dir or tree), batch_size=args.batch_size, seed=0, aug=aug,
                    device=device, num_workers=args.workers, holdout=holdout)
    except ConfigError as e:  # the loaders name the config key; here it is an option
        raise ConfigError(str(e).replace("train.batch_size=", "--batch-size ")) from None


def resolve(args) -> tuple[Path | None, Path | None, dict | None]:
    """(ImageFolder tree or None, cache dir or None, cache meta or None) from --src / --cache."""
    src, cache_dir = Path(args.src), Path(args.cache) if args.cache else None
    if (src / cache.META).exists():  # --src is a cache: its source tree is the baseline's
        cache_dir = cache_dir or src
        src = Path(cache.read_meta(src).get("source", ""))
    meta = cache.read_meta(cache_dir) if cache_dir is not None else None
    tree = src if (src / "train").is_dir() else None
    if tree is None and (cache_dir is None or not args.skip_baseline):
        raise FileNotFoundError(f"no ImageFolder tree at {src} (expected {src}/train/<class>/)")
    return tree, cache_dir, meta


def best_of(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """The best of the repeats, each measure on its own: the least disturbed run. A repeat too
    short for /proc's CPU ticks has no CPU figure (nan), which max() keeps where it is first."""
    return tuple(max((v for v in col if v == v), default=float("nan")) for col in zip(*runs))


def run(args) -> int:
    try:
        sizes = [int(s) for s in args.sizes.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--sizes: expected sizes like 64,128,224, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 8:
        raise ConfigError(f"--sizes must be >= 8 px, got {args.sizes!r}")
    if args.batches is None:
        args.batches = max(20, 4 * args.workers)
    if args.warmup is None:
        args.warmup = 2 * args.workers + 1
    if min(args.workers, args.batch_size, args.batches, args.repeats) < 1 or args.warmup < 0:
        raise ConfigError("--workers, --batch-size, --batches, --repeats must be >= 1")
    if args.randaugment < 0:
        raise ConfigError(f"--randaugment must be >= 0, got {args.randaugment}")
    if not 0 < args.crop_scale_min <= 1:
        raise ConfigError(f"--crop-scale-min must be in (0, 1], got {args.crop_scale_min}")
    import torch
    from ..runtime import check_device_option
    check_device_option(args.device)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available()
                          else "cpu")
    tree, cache_dir, meta = resolve(args)
    holdout = stand_in_holdout(tree, meta)  # once: a tree's is a scan of all its files
    if args.backend == "dali" and cache_dir is None:
        raise ConfigError("--backend dali decodes a prepared cache: give --cache")
    name = ("DALI" if args.backend == "dali" else "cache") if cache_dir else "FolderData"
    print(f"bench-data on {machine()}; device {device}, {args.workers} workers, batch "
          f"{args.batch_size}, {args.batches} timed batches after {args.warmup}, best of "
          f"{args.repeats}, crop scale ({args.crop_scale_min:g}, 1)"
          + (f", RandAugment {args.randaugment} ops" if args.randaugment else ""))
    if meta is not None:
        print(f"cache {cache_dir}: {meta['encoding']}, shorter side <= {meta['max_size']} px, "
              f"{cache.split_counts(meta)} images, {meta['cache_bytes'] / 2**20:.1f} MiB, "
              f"prepared in {meta['prepare_time_s']:.1f} s with {meta['workers']} workers")
    if tree is not None:
        print(f"tree {tree}")
    rows = []
    print(f"\n| size px | torchvision img/s | {name} img/s | ratio | torchvision img/CPU-s "
          f"| {name} img/CPU-s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    nan = (float("nan"), float("nan"))
    for size in sizes:
        base, ours = [], []
        for _ in range(args.repeats):
            # Made first (its workers start with its first batch): it refuses a batch larger
            # than the tree, where the baseline's loader would yield nothing, forever.
            data = make_loader(tree, cache_dir, holdout, args, device)
            if not args.skip_baseline:
                try:
                    base.append(timed(baseline_batches(tree, size, args, device), device,
                                      args.warmup, args.batches))
                except OSError as e:  # (PIL's UnidentifiedImageError is one)
                    # Plain ImageFolder has no way past an unreadable image; the loader has.
                    last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                    raise ConfigError(f"the torchvision baseline stopped at an unreadable "
                                      f"image ({last}); --skip-baseline times {name} "
                                      f"alone") from None
            ours.append(timed(loader_batches(data, size), device, args.warmup, args.batches))
            del data  # shuts its workers down before the next pipeline starts
        (b, bc), (o, oc) = [best_of(runs) if runs else nan for runs in (base, ours)]
        rows.append({"size": size, "baseline_img_s": b, "loader_img_s": o, "ratio": o / b,
                     "baseline_img_per_cpu_s": bc, "loader_img_per_cpu_s": oc,
                     "cpu_ratio": oc / bc})
        print(f"| {size} | {b:.0f} | {o:.0f} | {o / b:.2f}x | {bc:.0f} | {oc:.0f} "
              f"| {oc / bc:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "device": str(device), "loader": name, "cache_meta": meta,
            "args": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows},
            indent=1))
    return 0
