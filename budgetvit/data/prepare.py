"""`budgetvit prepare --src TREE --dst CACHE --max-size S`: convert an ImageFolder tree
(train/<class>/*, and val/<class>/* if there is one) into the cache of cache.py, once, on all
cores, resumably. A tree without val/ gives a train-only cache, to be trained on with
data.holdout (a part of train evaluated instead).

Each split's sorted file listing (the order torchvision's ImageFolder uses) is cut into shards of
--shard-size consecutive images. A worker process converts one shard: decode (JPEGs at reduced
DCT scale when they are much larger than S), convert to RGB, resize so the shorter side is at
most S, encode, append to the shard file; then it writes the shard, its index part and its
receipt, each atomically, the receipt last. A shard counts as done when its receipt exists and
its file is as long as the receipt says, so an interrupted run (or a cache that lost a shard
since), rerun with the same arguments, converts only the missing shards, and the
result is byte-identical to an uninterrupted run (conversion is deterministic, and the layout
does not depend on --workers). The last step merges the index parts and writes meta.json.

Bad source files never stop the run: CMYK, grayscale, palette, alpha, 16-bit and float images are
converted to RGB; huge images are decoded at reduced scale and downscaled (PIL's decompression
bomb limit is replaced by --max-pixels, checked after DCT scaling); truncated, empty and
non-image files, and images above --max-pixels, are skipped and listed in bad_files.tsv (a tab,
line break, carriage return or backslash in a name written as \\t, \\n, \\r, \\\\).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import ConfigError
from ..out_folder import check_folder
from ..progress import ProgressLines, terminal_columns
from . import cache
from .tree import default_workers, scan, to_rgb

COMMAND = "prepare"
HELP = "convert an ImageFolder tree (train/, val/) into a fast memory-mapped image cache"
MAX_PIXELS = 150_000_000  # ~450 MB as RGB: larger images are skipped (after DCT scaling)


def add_arguments(p) -> None:
    p.add_argument("--src", required=True,
                   help="ImageFolder root holding train/ and (optional) val/")
    p.add_argument("--dst", required=True, help="cache directory to create (or resume)")
    p.add_argument("--max-size", type=int, default=256,
                   help="store images with the shorter side at most this many px (default 256)")
    p.add_argument("--format", choices=cache.ENCODINGS, default="jpeg",
                   help="jpeg (default: small, scales on decode) or raw uint8 (7-9x bigger)")
    p.add_argument("--levels", type=int, default=cache.LEVELS,
                   help=f"copies per image at 1, 1/2, 1/4... of the size (default {cache.LEVELS})")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per usable CPU)")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="images per shard file (default: 1024)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"skip images with more pixels than this (default {MAX_PIXELS})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


_stop_asked = False


def _on_stop_signal(signum, frame):
    # Only noted here, and acted on between waits for the workers: an exception raised at
    # any instruction could leave a lock held (the shared progress counter's, a future's),
    # which the workers and the pool's shutdown would then wait on forever.
    global _stop_asked
    _stop_asked = True


def _stop_if_asked() -> None:
    if _stop_asked:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_noted():
    """While the pool runs, Ctrl-C too is only noted (in the workers as well, forked with the
    handler): Python's KeyboardInterrupt, raised at any instruction, has left a future's lock
    held and the pool's shutdown waiting on it forever. Elsewhere (the scan) it stops at once."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # (signal handlers are the main thread's; SIGINT ignored or handled: left so)
        return
    signal.signal(signal.SIGINT, _on_stop_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run(args) -> int:
    # SIGTERM (kill, a job scheduler) stops like Ctrl-C: the shards being converted finish,
    # the workers exit with the pool; by default the process would die and leave them behind.
    global _stop_asked
    _stop_asked = False
    old = signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        meta = prepare(args.src, args.dst, max_size=args.max_size, encoding=args.format,
                       levels=args.levels, workers=args.workers, shard_size=args.shard_size,
                       max_pixels=args.max_pixels, progress=not args.quiet)
    except WorkerDied as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:  # (before cli.main's bare "interrupted": this one says what is kept)
        print(e, file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    print(f"cache {args.dst}: {cache.split_counts(meta)} images of {meta['num_classes']} classes, "
          f"{meta['bad_files'] or 'no'} bad files skipped"
          f"{f' (see {cache.BAD_FILES})' if meta['bad_files'] else ''}, "
          f"{meta['cache_bytes'] / 2**20:.1f} MiB, prepared in {meta['prepare_time_s']:.1f} s")
    if "val" not in meta["splits"]:
        print(f"no val/ in {args.src}: train on this cache with --set data.holdout=0.1 (a tenth "
              f"of train, never trained on, evaluated instead)")
    return 0


# ----------------------------------------------------------------------------- one image

class Skip(Exception):
    """A source file that cannot go into the cache; the message is the reason in the report."""


class WorkerDied(RuntimeError):
    """A worker process was killed (by the OS, out of memory); finished shards are kept."""


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while converting; the message says how many shards are kept."""


def load_image(path: str, max_size: int, max_pixels: int) -> Image.Image:
    """RGB image with the shorter side at most max_size, or Skip."""
    if os.path.getsize(path) == 0:
        raise Skip("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/ICC chatter from odd files
        try:
            with Image.open(path) as img:
                w, h = img.size
                if w < 1 or h < 1:
                    raise Skip(f"no pixels ({w}x{h})")
                scale = max_size / min(w, h)
                if scale < 1:  # JPEG: decode at 1/2, 1/4, 1/8 scale, still >= the target
                    img.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
                if img.size[0] * img.size[1] > max_pixels:
                    raise Skip(f"too large ({w}x{h} px > --max-pixels {max_pixels})")
                img.load()
                img = to_rgb(img)
        except UnidentifiedImageError:
            raise Skip("not an image PIL can read") from None
        except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
            raise Skip(f"unreadable: {e}") from None
    scale = max_size / min(img.size)
    if scale < 1:
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
    if max(img.size) > 65535:  # the index stores sizes as uint16
        raise Skip(f"aspect ratio too extreme ({img.size[0]}x{img.size[1]} after resizing)")
    return img


def pyramid(img: Image.Image, levels: int) -> list[Image.Image]:
    """img and its copies at 1/2, 1/4, ... size (rounded up, as JPEG DCT scaling rounds)."""
    out = [img]
    for level in range(1, levels):
        f = 2 ** level
        size = (-(-img.width // f), -(-img.height // f))
        out.append(img.resize(size, Image.LANCZOS, reducing_gap=3.0))
    return out


# ----------------------------------------------------------------------------- one shard

_done = None  # images processed by this run, shared by all workers (for the progress bar)


def _init_worker(counter) -> None:
    global _done
    _done = counter
    Image.MAX_IMAGE_PIXELS = None  # replaced by --max-pixels, checked after DCT scaling


def convert_shard(job: dict) -> dict:
    """Convert one shard; returns its receipt {split, shard, images, bytes, bad}."""
    dst, split, k = Path(job["dst"]), job["split"], job["shard"]
    rows, bad, offset = [], [], 0
    path = dst / cache.shard_name(split, k)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for rel, label, source in job["items"]:
            try:
                img = load_image(os.path.join(job["src"], rel), job["max_size"],
                                 job["max_pixels"])
                copies = pyramid(img, job["levels"])
                records = [cache.encode(c, job["encoding"]) for c in copies]
            except Skip as e:
                bad.append((rel, str(e)))
            except Exception as e:  # anything else a decoder throws: list it, keep going
                bad.append((rel, f"{type(e).__name__}: {e}"))
            else:  # the levels of one image back to back
                sizes = [len(r) for r in records]
                offsets = [offset + sum(sizes[:i]) for i in range(len(records))]
                f.write(b"".join(records))
                rows.append((k, label, source, offsets, sizes, [c.height for c in copies],
                             [c.width for c in copies]))
                offset += sum(sizes)
            if _done is not None:
                with _done.get_lock():
                    _done.value += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    buf = io.BytesIO()
    np.save(buf, np.array(rows, dtype=cache.index_dtype(job["levels"])))
    parts = dst / cache.PARTS
    cache.write_atomic(parts / f"{split}-{k:05d}.idx.npy", buf.getvalue())
    receipt = {"split": split, "shard": k, "images": len(rows), "bytes": offset,
               "bad": [[r, " ".join(reason.split())] for r, reason in bad]}
    cache.write_atomic(parts / f"{split}-{k:05d}.json", json.dumps(receipt).encode())
    return receipt


# ----------------------------------------------------------------------------- the command

def _size(path: str) -> int:
    """Bytes of a file; -1 where it cannot be read (a dangling link, which load_image skips)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _shard_cut(dst: Path, receipt: Path) -> bool:
    """Whether the shard of a receipt is missing or shorter than when it was made."""
    if not receipt.exists():
        return False
    made = json.loads(receipt.read_text())
    shard = dst / cache.shard_name(made["split"], made["shard"])
    return _size(str(shard)) < made["bytes"]


def _plan(src: Path, settings: dict, shard_size: int) -> tuple[dict, list[dict]]:
    """What this cache will hold (written to parts/plan.json) and the shard jobs."""
    train, classes, class_to_idx = scan(src, "train")
    listing = {"train": train}
    if (src / "val").is_dir():
        listing["val"] = scan(src, "val", class_to_idx)[0]
    digest, jobs = {}, []  # digest: the splits this cache holds, and a hash of their files
    for split in listing:
        items = [(os.path.relpath(p, src), label, i) for i, (p, label) in enumerate(listing[split])]
        h = hashlib.sha256()
        for rel, label, _ in items:
            # (a name need not be UTF-8: Linux allows any bytes, which Python keeps as is)
            h.update(f"{rel}\t{label}\t{_size(os.path.join(src, rel))}\n".encode(
                errors="surrogateescape"))
        digest[split] = h.hexdigest()
        for k, start in enumerate(range(0, len(items), shard_size)):
            jobs.append({"split": split, "shard": k, "items": items[start:start + shard_size]})
    plan = {"format_version": cache.FORMAT_VERSION, **settings, "shard_size": shard_size,
            "classes": classes, "files": digest,
            "file_counts": {split: len(listing[split]) for split in listing}}
    return plan, jobs


# Flags a user can rerun with, by their plan key; the other keys come from the code's version.
FLAGS = {"encoding": "--format", "max_size": "--max-size", "levels": "--levels",
         "max_pixels": "--max-pixels", "shard_size": "--shard-size"}
NOT_COMPARED = ("file_counts",)  # (recorded to name a change; a plan from before lacks it)


def _same_plan(old: dict, new: dict) -> bool:
    def kept(plan):
        return {k: v for k, v in plan.items() if k not in NOT_COMPARED}
    return kept(old) == kept(new)


def _refusal(dst: Path, old: dict, new: dict, most: int = 4) -> str:
    """One line naming what differs between the plan a cache was started with and this one."""
    def change(name, key):
        return f"{name} {old.get(key)} -> {new[key]}"
    settings = [change(flag, key) for key, flag in FLAGS.items() if old.get(key) != new[key]]
    version = []  # what only another budgetvit version makes differ (no flag brings it back)
    if old.get("format_version") != new["format_version"]:
        version.append(change("cache format", "format_version"))
    if old.get("quality") != new["quality"] and old.get("encoding") == new["encoding"]:
        version.append(change("JPEG quality", "quality"))
    known = {*FLAGS, "format_version", "quality", "classes", "files", *NOT_COMPARED}
    version += [f"{k} {old.get(k)} -> {new.get(k)}" for k in dict.fromkeys([*old, *new])
                if k not in known and old.get(k) != new.get(k)]  # (a key of another version)
    files, classes = [], old.get("classes", [])
    if classes != new["classes"]:
        files.append(f"classes {len(classes)} -> {len(new['classes'])}"
                     if len(classes) != len(new["classes"]) else "other class names")
    was, now, counts = old.get("files", {}), new["files"], old.get("file_counts", {})
    for split in dict.fromkeys([*was, *now]):
        n = new["file_counts"].get(split)
        if split not in now:
            files.append(f"{split}/ gone")
        elif split not in was:
            files.append(f"{split}/ new")
        elif was[split] == now[split]:
            continue
        elif split not in counts:  # a plan from before file_counts: only the hash tells
            files.append(f"{split}/: other files, {n} now")
        elif counts[split] != n:
            files.append(f"{split}/: {counts[split]} -> {n} files")
        # (the hash holds each file's path, label and size: other classes move labels alone)
        elif classes == new["classes"]:
            files.append(f"{split}/: {n} files, other names or sizes")
    if version:
        why, advice = "by another budgetvit version", "delete it or choose another --dst"
    elif files:
        why = "with other settings and from other files" if settings else "from other files"
        advice = "check --src, or delete it / choose another --dst"
    else:
        why, advice = "with other settings", "rerun with those, or delete it / choose another --dst"
    found = version + settings + files
    more = f", {len(found) - most} more" if len(found) > most else ""
    return f"{dst} was started {why} ({', '.join(found[:most])}{more}); {advice}"


def prepare(src: str | Path, dst: str | Path, *, max_size: int = 256, encoding: str = "jpeg",
            levels: int = cache.LEVELS, workers: int = 0, shard_size: int = 1024,
            max_pixels: int = MAX_PIXELS, progress: bool = True) -> dict:
    """Create (or finish) the cache at dst from the ImageFolder tree at src; returns its meta."""
    t0 = time.perf_counter()
    if max_size < 8:
        raise ConfigError(f"--max-size must be >= 8 px, got {max_size}")
    if shard_size < 1 or max_pixels < 1:
        raise ConfigError("--shard-size and --max-pixels must be >= 1")
    if not 1 <= levels <= 4:
        raise ConfigError(f"--levels must be in [1, 4], got {levels}")
    if encoding not in cache.ENCODINGS:
        raise ConfigError(f"--format must be one of {', '.join(cache.ENCODINGS)}, got {encoding}")
    src, dst = Path(src).resolve(), Path(dst)
    # The tree's root (its meta.json would make it a cache) or a split folder (a class of
    # it): elsewhere, even inside --src (/data/imagenet/cache), the cache is not among images.
    inside = [src, src / "train", src / "val"]
    if any(d in inside[1:] for d in dst.resolve().parents) or dst.resolve() == src:
        raise ConfigError(f"--dst {dst} is the image tree --src {src} or one of its splits: the "
                          f"cache's files would go among its images; choose a folder outside them")
    check_folder(dst, "--dst")
    settings = {"encoding": encoding, "max_size": max_size, "levels": levels,
                "max_pixels": max_pixels,
                "quality": cache.JPEG_QUALITY if encoding == "jpeg" else None}
    plan, jobs = _plan(src, settings, shard_size)
    parts = dst / cache.PARTS
    parts.mkdir(parents=True, exist_ok=True)
    plan_file = parts / "plan.json"
    if plan_file.exists() and not _same_plan(old := json.loads(plan_file.read_text()), plan):
        raise ConfigError(_refusal(dst, old, plan))

    def receipt_path(job):
        return parts / f"{job['split']}-{job['shard']:05d}.json"

    # A shard deleted or cut short after it was made (a copy that failed) is made again: its
    # receipt goes, and so does meta.json until the cache is whole once more.
    cut = [r for r in map(receipt_path, jobs) if _shard_cut(dst, r)]
    if (dst / cache.META).exists() and plan_file.exists() and not cut:
        return cache.read_meta(dst)  # already complete
    (dst / cache.META).unlink(missing_ok=True)
    for receipt in cut:
        receipt.unlink()
    cache.write_atomic(plan_file, json.dumps(plan, indent=1).encode())

    # Wall time of earlier, interrupted runs (up to their last finished shard) is kept in
    # parts/elapsed.json and added, so prepare_time_s is the whole preparation, not its last run.
    elapsed_file = parts / cache.ELAPSED
    earlier = json.loads(elapsed_file.read_text())["seconds"] if elapsed_file.exists() else 0.0

    def record_elapsed():
        seconds = earlier + time.perf_counter() - t0
        cache.write_atomic(elapsed_file, json.dumps({"seconds": round(seconds, 2)}).encode())
        return seconds

    todo = [j for j in jobs if not receipt_path(j).exists()]
    total = sum(len(j["items"]) for j in jobs)
    reused = total - sum(len(j["items"]) for j in todo)
    workers = workers if workers > 0 else default_workers()
    if todo:
        try:
            _run_jobs(todo, dict(src=str(src), dst=str(dst), encoding=encoding,
                                 max_size=max_size, levels=levels, max_pixels=max_pixels),
                      workers, total, reused, progress, record_elapsed)
        except KeyboardInterrupt:  # (counted after the pool ended: shards in flight finish)
            global _stop_asked
            _stop_asked = False  # (this stop, and any signal since, acted on: a later call runs)
            done = sum(receipt_path(j).exists() for j in jobs)
            raise Stopped(f"stopped: {done} of {len(jobs)} shards done and kept; rerun the same "
                          f"command to go on") from None
    meta = _finish(dst, plan, jobs, receipt_path)
    meta.update(source=str(src), workers=workers, resumed_shards=len(jobs) - len(todo),
                prepare_time_s=round(record_elapsed(), 2))
    meta["cache_bytes"] = cache.cache_bytes(dst)
    cache.write_atomic(dst / cache.META, json.dumps(meta, indent=1).encode())
    return meta


def _run_jobs(todo: list[dict], common: dict, workers: int, total: int, reused: int,
              progress: bool, on_shard_done) -> None:
    from tqdm import tqdm
    # Processes rather than threads: decoding and resizing hold the GIL for part of the work.
    # ProcessPoolExecutor rather than Pool: a worker killed by the OS (out of memory) raises
    # BrokenProcessPool instead of hanging forever. fork where there is one: a spawned worker
    # would import torch (through the package) for nothing.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    counter = context.Value("l", 0)
    with _ctrl_c_noted(), ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                              initializer=_init_worker,
                                              initargs=(counter,)) as ex:
        pending = {ex.submit(convert_shard, {**common, **job}) for job in todo}
        # The bar (and its monitor thread) only after the workers are forked. Output that is
        # no terminal (a log file) gets a line every 5% instead of a bar redrawn 10 times a
        # second for hours.
        on_terminal = terminal_columns(sys.stderr) > 0
        bar = tqdm(total=total, initial=reused, unit="img", desc="prepare",
                   disable=not (progress and on_terminal), smoothing=0.1)
        lines = ProgressLines(total, reused) if progress and not on_terminal else None
        try:
            while pending:
                _stop_if_asked()
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()  # re-raises a worker's unexpected error
                if finished:
                    on_shard_done()
                bar.update(reused + counter.value - bar.n)
                if lines:
                    lines.update(reused + counter.value)
        except BrokenProcessPool:
            raise WorkerDied("a prepare worker died (out of memory?); finished shards are "
                               "kept, rerun the same command to resume") from None
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            bar.close()


def _finish(dst: Path, plan: dict, jobs: list[dict], receipt_path) -> dict:
    """Merge the shard index parts into one index per split, write the bad-file report."""
    splits, bad = {}, []
    for split in plan["files"]:
        mine = [j for j in jobs if j["split"] == split]
        receipts = [json.loads(receipt_path(j).read_text()) for j in mine]
        index = np.concatenate([np.load(dst / cache.PARTS / f"{split}-{j['shard']:05d}.idx.npy")
                                for j in mine])
        buf = io.BytesIO()
        np.save(buf, index)
        cache.write_atomic(dst / f"{split}.idx.npy", buf.getvalue())
        bad += [b for r in receipts for b in r["bad"]]
        splits[split] = {"images": len(index), "bad": sum(len(r["bad"]) for r in receipts),
                         "shards": len(mine), "bytes": sum(r["bytes"] for r in receipts)}
    # A name may hold a tab or a line break (Linux allows them): escaped, a row stays a row.
    escape = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    report = "".join(f"{rel.translate(escape)}\t{reason}\n" for rel, reason in sorted(bad))
    cache.write_atomic(dst / cache.BAD_FILES,
                       ("path\treason\n" + report).encode(errors="surrogateescape"))
    for split, counts in splits.items():
        if counts["images"] == 0:
            raise ConfigError(f"no readable images in {split}/ (see {dst / cache.BAD_FILES})")
    for leftover in dst.rglob("*.tmp"):  # from a run killed mid-write
        leftover.unlink()
    return {"format_version": cache.FORMAT_VERSION, "encoding": plan["encoding"],
            "quality": plan["quality"], "max_size": plan["max_size"], "levels": plan["levels"],
            "shard_size": plan["shard_size"], "max_pixels": plan["max_pixels"],
            "classes": plan["classes"], "num_classes": len(plan["classes"]),
            "splits": splits, "bad_files": len(bad)}
