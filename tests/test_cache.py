"""`budgetvit prepare`, the cache, CacheData and `budgetvit bench-data` on real JPEG trees
(Fashion-MNIST images at several sizes, scikit-image's natural photos) with every kind of bad
file: conversion and skip report, resume after a kill, labels and class order as ImageFolder,
the loader interface, exact resume, training on the cache. The DALI backend: test_dali.py."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from budgetvit import checkpoint
from budgetvit.cli import main
from budgetvit.config import AugSection, ConfigError, validate
from budgetvit.data import cache
from budgetvit.data.cache_loader import CacheData, best_level, crop_resize, random_resized_crop
from budgetvit.data.holdout import holdout_rows
from budgetvit.data.imagefolder import FolderData
from budgetvit.data.tree import scan
from budgetvit.data.prepare import prepare
from budgetvit.train import train

from .conftest import crash_at_step, needs_fmnist, tiny_config
from .imagetree import damaged_copy

pytest.importorskip("skimage")
pytestmark = needs_fmnist

CLASSES = ["bag", "coat", "photo", "sneaker"]
AUG = AugSection(crop_scale_min=0.35)


def snapshot(root: Path):
    """Every file's bytes, and meta.json without the fields that describe the run."""
    files = {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
             if f.is_file() and f.name not in (cache.META, cache.ELAPSED)}
    meta = json.loads((root / cache.META).read_text())
    for key in ("prepare_time_s", "resumed_shards", "workers"):
        meta.pop(key)
    return files, meta


# ----------------------------------------------------------------------------- prepare

def test_bad_files_are_converted_or_skipped_and_listed(trees, caches):
    _, dirty, skipped, converted = trees
    meta = cache.read_meta(caches[1])
    report = (caches[1] / cache.BAD_FILES).read_text().splitlines()
    assert report[0] == "path\treason"
    listed = dict(line.split("\t") for line in report[1:])
    assert sorted(listed) == sorted(skipped)
    for path, fragment in skipped.items():
        assert fragment in listed[path], (path, listed[path])
    assert meta["bad_files"] == len(skipped) == 5
    assert meta["splits"]["train"]["images"] == 44 + len(converted)
    assert meta["splits"]["val"]["images"] == 15
    # Every converted file is in the cache as RGB, shorter side <= 64 px, each level half the
    # size of the one before (rounded up).
    from budgetvit.data.tree import scan
    samples = scan(dirty, "train")[0]
    split = cache.CacheSplit(caches[1], "train")
    stored = {os.path.relpath(samples[int(s)][0], dirty): i
              for i, s in enumerate(split.index["source"])}
    for path in converted:
        i = stored[path]
        w, h = split.widths[i], split.heights[i]
        assert min(w[0], h[0]) <= 64 and list(w[1:]) == [-(-w[0] // 2), -(-w[0] // 4)]
        for level in range(3):
            img = split.image(i, level)
            img.load()
            assert img.mode == "RGB" and img.size == (w[level], h[level])
    huge = split.image(stored["train/coat/huge.jpg"])
    assert min(huge.size) == 64 and huge.size[0] == 80  # 15000 x 12000 -> 80 x 64


def test_cache_has_imagefolder_labels_and_class_order(trees, caches):
    from torchvision.datasets import ImageFolder
    for tree, root in zip(trees[:2], caches):
        meta = cache.read_meta(root)
        for split in ("train", "val"):
            reference = ImageFolder(str(tree / split), loader=lambda p: p)
            assert meta["classes"] == reference.classes == CLASSES
            index = np.load(root / f"{split}.idx.npy")
            labels = [reference.samples[int(s)][1] for s in index["source"]]
            assert labels == index["label"].tolist()
            assert list(index["source"]) == sorted(index["source"])  # ImageFolder order


def test_prepare_takes_file_names_that_are_not_utf8(trees, tmp_path):
    """Linux file names are bytes: a Latin-1 name (from an old archive) is cached, and a bad
    file with one is listed in bad_files.tsv under its own bytes."""
    src = tmp_path / "tree"
    shutil.copytree(trees[0], src)
    coat = src / "train" / "coat"
    good, bad = os.fsdecode(b"caf\xe9.jpg"), os.fsdecode(b"cass\xe9.jpg")
    shutil.copy(next(coat.iterdir()), coat / good)
    (coat / bad).write_bytes(b"not an image")
    before = prepare(trees[0], tmp_path / "ref", max_size=64, shard_size=16, workers=1,
                     progress=False)
    meta = prepare(src, tmp_path / "cache", max_size=64, shard_size=16, workers=1,
                   progress=False)
    assert meta["splits"]["train"]["images"] == before["splits"]["train"]["images"] + 1
    assert b"train/coat/cass\xe9.jpg\t" in (tmp_path / "cache" / cache.BAD_FILES).read_bytes()


def test_prepare_resumes_after_a_kill_with_an_identical_cache(trees, tmp_path):
    clean = trees[0]
    reference = prepare(clean, tmp_path / "ref", max_size=64, shard_size=4, workers=2,
                        progress=False)
    dst = tmp_path / "killed"
    cmd = [sys.executable, "-m", "budgetvit", "prepare", "--src", str(clean), "--dst", str(dst),
           "--max-size", "64", "--shard-size", "4", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((dst / cache.PARTS).glob("*-*.json")) and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker, mid-run
    proc.wait()
    assert not (dst / cache.META).exists()
    meta = prepare(clean, dst, max_size=64, shard_size=4, workers=2, progress=False)
    total = reference["splits"]["train"]["shards"] + reference["splits"]["val"]["shards"]
    assert 1 <= meta["resumed_shards"] < total
    assert snapshot(dst) == snapshot(tmp_path / "ref")
    assert not list(dst.rglob("*.tmp"))


def test_prepare_redoes_unfinished_shards_and_refuses_other_settings(trees, caches, tmp_path):
    dst = tmp_path / "cache"
    shutil.copytree(caches[0], dst)
    # A run that died mid-way: no meta, two shards without receipt (one half-written), and
    # a stale temp file.
    (dst / cache.META).unlink()
    for name in ("train-00001", "val-00000"):
        (dst / cache.PARTS / f"{name}.json").unlink()
    (dst / "train-00001.bin").write_bytes(b"\xff" * 100)
    (dst / "train-00002.bin.tmp").write_bytes(b"partial")
    (dst / cache.PARTS / cache.ELAPSED).write_text('{"seconds": 1000.0}')  # the dead run's time
    meta = prepare(trees[0], dst, max_size=64, shard_size=16, workers=1, progress=False)
    assert meta["resumed_shards"] == 2
    assert 1000.0 < meta["prepare_time_s"] < 1060.0  # earlier runs' time is counted too
    assert snapshot(dst) == snapshot(caches[0])
    # A finished cache is left alone; other settings or files are refused.
    again = prepare(trees[0], dst, max_size=64, shard_size=16, workers=1, progress=False)
    assert again == meta
    with pytest.raises(ConfigError, match=r"started with other settings \(--max-size 64 -> 96\)"):
        prepare(trees[0], dst, max_size=96, shard_size=16, progress=False)


def test_a_cache_of_other_settings_or_files_is_refused_naming_what_differs(tmp_path, capsys):
    """One line with each difference from the cache's parts/plan.json (flags as typed, files as
    counts per split) and what to do; the refusal comes before any conversion."""
    from .conftest import write_image_tree
    tree, dst = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2), \
        tmp_path / "cache"
    args = ["prepare", "--src", str(tree), "--dst", str(dst), "--max-size", "32", "--quiet",
            "--workers", "1"]
    assert main(args) == 0
    capsys.readouterr()

    def refusal(*argv, src=tree):
        assert main([*args[:2], str(src), *args[3:], *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        return err.strip().removeprefix(f"error: {dst} was started ")

    assert refusal("--max-size", "48", "--format", "raw") == (
        "with other settings (--format jpeg -> raw, --max-size 32 -> 48); rerun with those, "
        "or delete it / choose another --dst")
    assert refusal("--format", "raw", "--max-size", "48", "--levels", "2", "--max-pixels", "9",
                   "--shard-size", "3") == (
        "with other settings (--format jpeg -> raw, --max-size 32 -> 48, --levels 3 -> 2, "
        "--max-pixels 150000000 -> 9, 1 more); rerun with those, or delete it / choose another "
        "--dst")
    fewer = tmp_path / "fewer"
    shutil.copytree(tree, fewer)
    (fewer / "train" / "bag" / "bag_000.jpg").unlink()
    shutil.rmtree(fewer / "val")
    assert refusal(src=fewer) == ("from other files (train/: 12 -> 11 files, val/ gone); check "
                                  "--src, or delete it / choose another --dst")
    assert refusal("--levels", "2", src=fewer) == (
        "with other settings and from other files (--levels 3 -> 2, train/: 12 -> 11 files, "
        "val/ gone); check --src, or delete it / choose another --dst")
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    (other / "train" / "bag" / "bag_000.jpg").rename(other / "train" / "bag" / "bag_new.jpg")
    (other / "train" / "hat").mkdir()
    shutil.copy(tree / "train" / "bag" / "bag_001.jpg", other / "train" / "hat")
    assert refusal(src=other) == ("from other files (classes 3 -> 4, train/: 12 -> 13 files); "
                                  "check --src, or delete it / choose another --dst")
    shutil.rmtree(other / "train" / "hat")
    assert refusal(src=other) == ("from other files (train/: 12 files, other names or sizes); "
                                  "check --src, or delete it / choose another --dst")
    # A cache begun before plan.json counted files: still whole, and a change still named.
    plan_file = dst / cache.PARTS / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan_file.write_text(json.dumps({k: v for k, v in plan.items() if k != "file_counts"}))
    assert main(args) == 0
    capsys.readouterr()
    assert refusal(src=fewer).startswith("from other files (train/: other files, 11 now, ")
    plan_file.write_text(json.dumps({**plan, "format_version": 0}))
    assert refusal("--max-size", "48") == (
        f"by another budgetvit version (cache format 0 -> {cache.FORMAT_VERSION}, --max-size "
        f"32 -> 48); delete it or choose another --dst")


def _killed_by_the_os(job):
    os._exit(9)  # what an out-of-memory kill looks like from the pool


def test_a_dead_worker_stops_prepare_with_one_line(trees, tmp_path, monkeypatch, capsys):
    from budgetvit.data import prepare as command
    monkeypatch.setattr(command, "convert_shard", _killed_by_the_os)
    assert main(["prepare", "--src", str(trees[0]), "--dst", str(tmp_path / "c"), "--quiet",
                 "--workers", "1"]) == 1
    assert "rerun the same command to resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the loader

def test_a_split_keeps_a_bounded_number_of_shards_open(caches, monkeypatch):
    """Each mapped shard holds a file open: reading every image (in a shuffled order) with at
    most 2 maps gives the records an unbounded split gives, with at most 2 more open files."""
    full = cache.CacheSplit(caches[0], "train")
    assert len(np.unique(full.shards)) >= 3
    monkeypatch.setattr(cache.CacheSplit, "max_open_shards", 2)
    bounded = cache.CacheSplit(caches[0], "train")
    expected = [bytes(full.record(i, 1)) for i in range(len(full))]  # (its shards stay open)
    open_files = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = open_files()
    for i in np.random.default_rng(0).permutation(len(full)):
        assert bytes(bounded.record(int(i), 1)) == expected[i]
        assert len(bounded._maps) <= 2 and open_files() <= before + 2


def test_out_of_files_or_memory_is_an_error_not_a_bad_image():
    """A truncated image is stood in for; running out of open files or memory would make
    every image fail alike, so it is raised, not counted as bad images."""
    from budgetvit.data.imagefolder import STOOD_IN, read_or_stand_in

    def read(j):
        if j == 0:
            raise OSError("image file is truncated")
        return j
    assert read_or_stand_in(read, 0, 5, train=True) == (1, 1, STOOD_IN)
    for error in (OSError(errno.EMFILE, "Too many open files"), MemoryError()):
        def failing(j, error=error):
            raise error
        with pytest.raises(type(error)):
            read_or_stand_in(failing, 0, 5, train=True)


def test_cache_loader_has_folderdata_interface_and_order(trees, caches):
    common = dict(batch_size=8, seed=3, aug=AUG, device="cpu", num_workers=0, size=32)
    c, f = CacheData(str(caches[0]), **common), FolderData(str(trees[0]), **common)
    assert (c.classes, c.num_classes, c.in_chans, c.mean, c.std) == \
           (f.classes, f.num_classes, f.in_chans, f.mean, f.std)
    assert (c.num_images, c.batches_per_epoch, c.bad_images) == (44, 5, 0)
    assert f.num_images == 44 and f.batches_per_epoch == 5
    for step in range(7):  # across the epoch boundary; same sampler, same labels
        if step == 3:
            c.set_size(16)
            f.set_size(16)
        (xc, yc), (xf, yf) = c.next_batch(), f.next_batch()
        assert torch.equal(yc, yf) and yc.dtype == torch.long
        assert xc.shape == xf.shape == (8, 3, c.size, c.size) and xc.dtype == torch.uint8
        assert xc.is_contiguous()
    assert c.state_dict() == f.state_dict() == {"epoch": 1, "batch": 2, "bad_images": 0,
                                               "num_images": 44}
    # Evaluation: every val image exactly once over two ranks, in FolderData's order.
    ranks = [list(c.eval_batches(48, 4, rank, 2)) for rank in range(2)]
    ys = [torch.cat([y for _, y in batches]) for batches in ranks]
    ref = [torch.cat([y for _, y in f.eval_batches(48, 4, rank, 2)]) for rank in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(ys, ref)) and sum(map(len, ys)) == 15
    assert ranks[0][0][0].shape == (4, 3, 48, 48) and ranks[0][0][0].dtype == torch.uint8


def test_holdout_evaluates_the_same_train_images_with_both_loaders(trees, caches):
    common = dict(batch_size=8, seed=3, aug=AUG, device="cpu", num_workers=0, size=32,
                  holdout=0.25)
    c, f = CacheData(str(caches[0]), **common), FolderData(str(trees[0]), **common)
    all_train, _, _ = scan(trees[0], "train")
    keep, held = holdout_rows(44, 0.25)
    assert len(held) == 11 and c.num_images == f.num_images == 33
    assert c.eval_split == f.eval_split == "holdout (0.25 of train, 11 images)"
    assert list(f.val_samples) == [all_train[i] for i in held]  # train/ images, not val/
    labels = [label for _, label in all_train]
    for data in (c, f):
        ys = torch.cat([y for _, y in data.eval_batches(32, 4)])
        assert ys.tolist() == [labels[i] for i in held]
    # Training draws from the kept images only.
    assert list(f.dataset.samples) == [all_train[i] for i in keep]
    assert c.train_split.labels.tolist() == [labels[i] for i in keep]
    assert c.train_split.record(0) == cache.CacheSplit(caches[0], "train").record(int(keep[0]))


def test_cache_loader_resumes_exactly_with_workers(caches):
    common = dict(batch_size=8, seed=0, aug=AUG, device="cpu", num_workers=2, size=32)
    a = CacheData(str(caches[1]), **common)
    stream, state = [], None
    for step in range(8):
        if step == 3:
            state = a.state_dict()
        stream.append(a.next_batch())
    b = CacheData(str(caches[1]), **common)
    b.load_state_dict(state)
    for x, y in stream[3:]:
        xb, yb = b.next_batch()
        assert torch.equal(x, xb) and torch.equal(y, yb)
    assert a.bad_images == 0


def test_the_run_is_told_of_files_prepare_left_out_and_of_upsampled_images(caches):
    """The dirty cache (64 px, 5 files left out): at 32 px evaluation views 37 px, which the
    cache holds; at 64 px it views 73 px, more than the cache holds."""
    common = dict(batch_size=8, seed=0, aug=AUG, device="cpu", num_workers=0)
    left_out = (f"note: 5 files of the tree were left out by prepare (listed in "
                f"{caches[1] / cache.BAD_FILES})")
    assert CacheData(str(caches[1]), size=32, **common).notes == [left_out]
    assert CacheData(str(caches[1]), size=64, **common).notes == [left_out, (
        "warning: the cache's images are at most 64 px on their shorter side, and evaluation "
        "at 64 px resizes them to 73 px: they are upsampled (prepare the cache with "
        "--max-size 73 or more)")]
    assert CacheData(str(caches[0]), size=56, **common).notes == []  # 56 / 0.875 = 64


def test_a_size_change_restarts_the_cache_workers_where_a_resume_would(caches):
    """Batches the workers prefetched at 16 px are dropped: after the change the stream is
    the one a run resumed at that stage boundary gets."""
    common = dict(batch_size=8, seed=0, aug=AUG, device="cpu", num_workers=2, size=32)
    a = CacheData(str(caches[0]), **common)
    a.set_size(16)
    a.next_batch()
    state = a.state_dict()
    a.set_size(32)
    b = CacheData(str(caches[0]), **common)
    b.load_state_dict(state)
    for _ in range(6):
        (x, y), (xb, yb) = a.next_batch(), b.next_batch()
        assert x.shape == (8, 3, 32, 32) and torch.equal(x, xb) and torch.equal(y, yb)


def test_damaged_records_are_counted_not_fatal(caches, tmp_path):
    dst = damaged_copy(caches[0], tmp_path / "cache", image=5)
    d = CacheData(str(dst), batch_size=4, seed=0, aug=AUG, device="cpu", num_workers=0, size=16)
    for _ in range(d.batches_per_epoch):  # one epoch touches every image
        x, _ = d.next_batch()
        assert x.shape == (4, 3, 16, 16)
    assert d.bad_images == 1


def test_damaged_eval_record_is_left_out_not_scored_twice(caches, tmp_path):
    clean = CacheData(str(caches[0]), batch_size=4, seed=0, aug=AUG, device="cpu",
                      num_workers=0, size=16)
    dst = damaged_copy(caches[0], tmp_path / "cache", image=2, split="val")
    d = CacheData(str(dst), batch_size=4, seed=0, aug=AUG, device="cpu", num_workers=0, size=16)
    want = torch.cat([y for _, y in clean.eval_batches(16, 5)])
    got = torch.cat([y for _, y in d.eval_batches(16, 5)])
    assert torch.equal(got, torch.cat([want[:2], want[3:]])) and d.bad_images == 0
    assert (d.left_out, d.left_out_file) == (1, None)  # (a record has no file name to give)


def test_randaugment_follows_the_position_at_any_world_size(caches):
    """RandAugment's draws come from the position alone, not from the global RNG, and rank 1
    of 2 gets exactly the second half of the one-process batch."""
    aug = AugSection(crop_scale_min=0.35, randaugment_ops=2, randaugment_magnitude=9)
    common = dict(batch_size=8, seed=0, aug=aug, device="cpu", num_workers=0, size=32)
    torch.manual_seed(1)
    x1, _ = CacheData(str(caches[0]), **common).next_batch()
    torch.manual_seed(2)
    x2, _ = CacheData(str(caches[0]), **common).next_batch()
    assert torch.equal(x1, x2) and x1.dtype == torch.uint8
    half, _ = CacheData(str(caches[0]), rank=1, world=2, **common).next_batch()
    assert torch.equal(half, x1[4:])
    plain, _ = CacheData(str(caches[0]), **{**common, "aug": AugSection(
        crop_scale_min=0.35)}).next_batch()
    assert sum(not torch.equal(a, b) for a, b in zip(x1, plain)) >= 6  # it augments


def test_crop_geometry_and_reduced_decoding(tmp_path):
    import random
    rng = random.Random(0)
    for _ in range(500):
        x, y, w, h = random_resized_crop(rng, 341, 256, 0.08)
        assert 0 <= x and x + w <= 341 and 0 <= y and y + h <= 256 and w > 0 and h > 0
    # The smallest level whose crop still has >= size px each way.
    widths, heights = np.array([341, 171, 86]), np.array([256, 128, 64])
    assert best_level(widths, heights, (0, 0, 341, 256), 64) == 2
    assert best_level(widths, heights, (0, 0, 200, 200), 64) == 1
    assert best_level(widths, heights, (0, 0, 120, 120), 64) == 0
    # JPEG draft: a 300 px crop to 64 px decodes at 1/4 scale (75 px >= 64), not 1/8.
    Image.fromarray(np.full((512, 512, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    img = Image.open(tmp_path / "a.jpg")
    out = crop_resize(img, (100, 100, 300, 300), 64)
    assert img.size == (128, 128) and out.size == (64, 64)


def test_training_on_the_cache(caches, tmp_path, capsys):
    cfg = tiny_config("data.dataset=cache", f"data.path={caches[1]}", "data.num_workers=0",
                      "train.batch_size=12", "train.budget=4steps", "train.eval_batch_size=5",
                      "curriculum.stages=16:0.5,32:0.5", "curriculum.final_size_px=32")
    summary = train(cfg, tmp_path / "run")
    assert "\nnote: 5 files of the tree were left out by prepare" in capsys.readouterr().out
    assert summary["steps"] == 4 and [st["img_size"] for st in summary["stages"]] == [16, 32]
    assert summary["evals"][-1]["eval_images"] == 15
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "run")[-1])
    assert state["classes"] == CLASSES


def test_a_tree_without_val_gives_a_train_only_cache_trained_with_holdout(trees, tmp_path,
                                                                          capsys):
    src, dst = tmp_path / "tree", tmp_path / "cache"
    shutil.copytree(trees[0] / "train", src / "train")
    assert main(["prepare", "--src", str(src), "--dst", str(dst), "--max-size", "64",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "44 train images of 4 classes" in out and "--set data.holdout=0.1" in out
    assert list(cache.read_meta(dst)["splits"]) == ["train"] and not (dst / "val.idx.npy").exists()
    common = ("data.dataset=cache", f"data.path={dst}", "data.num_workers=0",
              "train.batch_size=8", "train.budget=2steps", "train.eval_batch_size=5",
              "curriculum.mode=off", "curriculum.final_size_px=32")
    summary = train(tiny_config(*common, "data.holdout=0.25"), tmp_path / "run")
    assert summary["eval_split"] == "holdout (0.25 of train, 11 images)"
    assert summary["evals"][-1]["eval_images"] == 11
    cfg = tiny_config(*common)  # no holdout: there is nothing to evaluate on
    with pytest.raises(ConfigError, match=r"has no val split \(its source tree had no val/\): "
                                          r"evaluate on a part of train instead with --set "
                                          r"data.holdout=0.1"):
        train(cfg, tmp_path / "run2")
    # bench-data times training batches only: both train-only sources time them
    for source in (["--src", str(dst), "--skip-baseline"], ["--src", str(src)]):
        assert main(["bench-data", *source, "--sizes", "32", "--workers", "1", "--batch-size",
                     "4", "--batches", "2", "--warmup", "1", "--repeats", "1"]) == 0, source
        assert "| 32 |" in capsys.readouterr().out


def test_resume_on_the_cache_gives_identical_weights(caches, tmp_path):
    """Loader workers restart on resume; nothing about that may move the random state that
    mixup and drop path draw from (a DataLoader draws its base seed from the global RNG
    unless given a generator)."""
    args = ("data.dataset=cache", f"data.path={caches[0]}", "data.num_workers=0",
            "train.batch_size=12", "train.budget=10steps", "checkpoint.every_steps=4",
            "train.eval_batch_size=5", "curriculum.stages=16:0.5,32:0.5",
            "curriculum.final_size_px=32", "train.deterministic=true", "aug.mixup=0.2",
            "model.drop_path=0.1")
    train(tiny_config(*args), tmp_path / "straight")
    crash_at_step(tiny_config(*args), tmp_path / "resumed", 6)
    train(tiny_config(*args), tmp_path / "resumed")
    a, b = (checkpoint.load(checkpoint.list_checkpoints(tmp_path / run)[-1])["model"]
            for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- commands

@pytest.mark.parametrize("randaugment", [0, 2])
def test_bench_data_prints_the_table(trees, caches, tmp_path, capsys, monkeypatch, randaugment):
    from budgetvit.data import bench_data
    loaders, make_loader = [], bench_data.make_loader
    monkeypatch.setattr(bench_data, "make_loader",
                        lambda *a: loaders.append(make_loader(*a)) or loaders[-1])
    out = tmp_path / "bench.json"
    assert main(["bench-data", "--src", str(trees[0]), "--cache", str(caches[0]), "--sizes",
                 "16,32", "--workers", "1", "--batch-size", "4", "--batches", "2",
                 "--warmup", "1", "--repeats", "1", "--json", str(out),
                 "--randaugment", str(randaugment)]) == 0
    text = capsys.readouterr().out
    assert "| 16 |" in text and "| 32 |" in text and "torchvision img/s" in text
    assert ("RandAugment 2 ops" in text) == bool(randaugment)
    assert [d.aug.randaugment_ops for d in loaders] == [randaugment] * 2
    rows = json.loads(out.read_text())["rows"]
    assert [r["size"] for r in rows] == [16, 32] and all(r["ratio"] > 0 for r in rows)


@pytest.mark.parametrize("args, fragment", [
    (["prepare", "--src", "{tmp}/nothing", "--dst", "{tmp}/c"], "no train/ folder"),
    (["prepare", "--src", "{clean}", "--dst", "{tmp}/c", "--max-size", "4"], "--max-size"),
    (["bench-data", "--src", "{tmp}"], "no ImageFolder tree"),
    (["bench-data", "--src", "{clean}", "--cache", "{tmp}"], "no finished budgetvit cache"),
    (["bench-data", "--src", "{clean}", "--sizes", "64,big"], "--sizes"),
    (["bench-data", "--src", "{clean}", "--randaugment", "-1"], "--randaugment"),
    (["train", "--set", "data.dataset=cache"], "data.dataset=cache needs"),
])
def test_user_errors_are_one_line_exit_2(trees, tmp_path, capsys, args, fragment):
    args = [a.format(tmp=tmp_path, clean=trees[0]) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_config_accepts_cache_with_a_path(caches):
    cfg = tiny_config("data.dataset=cache", f"data.path={caches[0]}")
    validate(cfg)


def test_bench_data_takes_the_best_repeat_of_each_measure():
    """A repeat too short for a CPU figure (nan) first: the other repeat's figure wins."""
    from budgetvit.data.bench_data import best_of
    nan = float("nan")
    assert best_of([(100.0, nan), (90.0, 900.0), (95.0, 800.0)]) == (100.0, 900.0)
    b, bc = best_of([(100.0, nan)])
    assert b == 100.0 and bc != bc


def test_bench_data_counts_the_cpu_of_grandchildren():
    """Loader workers a forkserver starts are grandchildren of the timing process: their CPU
    time counts (with children alone, images per CPU-second would read far too high)."""
    from budgetvit.data.bench_data import cpu_seconds
    burn = ("import sys, time\n"
            "while time.process_time() < 0.5: pass\n"
            "print('done', flush=True); sys.stdin.read()")
    middle = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    before = cpu_seconds()
    proc = subprocess.Popen([sys.executable, "-c", middle], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "done\n"  # the grandchild burnt 0.5 s and still lives
        assert cpu_seconds() - before >= 0.5
    finally:
        proc.communicate("")
