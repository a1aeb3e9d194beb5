"""`budgetvit prepare` on real JPEG trees (Fashion-MNIST images at several sizes,
scikit-image's natural photos) with every kind of bad file: conversion and skip report, file
names, resume after a kill, a cache begun with other settings or files, dead workers. The
cache it makes, as read: test_cache.py."""
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

from budgetvit.cli import main
from budgetvit.config import ConfigError
from budgetvit.data import cache
from budgetvit.data.prepare import prepare

from .conftest import needs_fmnist

pytest.importorskip("skimage")
pytestmark = needs_fmnist

CLASSES = ["bag", "coat", "photo", "sneaker"]


def snapshot(root: Path):
    """Every file's bytes, and meta.json without the fields that describe the run."""
    files = {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
             if f.is_file() and f.name not in (cache.META, cache.ELAPSED)}
    meta = json.loads((root / cache.META).read_text())
    for key in ("prepare_time_s", "resumed_shards", "workers"):
        meta.pop(key)
    return files, meta


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


def test_prepare_writes_lines_not_a_bar_where_stderr_is_no_terminal(trees, tmp_path, capsys):
    """A log file gets a line at each 5% of the images with the time left, not a bar redrawn
    with carriage returns."""
    meta = prepare(trees[0], tmp_path / "c", max_size=32, shard_size=8, workers=1)
    total = sum(s["images"] + s.get("bad", 0) for s in meta["splits"].values())
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith(f"prepare: {total:,} of {total:,} images (100%), "
                                            f"0m00s left\n")


def test_progress_lines_come_every_5_percent_with_the_time_left(monkeypatch, capsys):
    from budgetvit import progress
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = progress.ProgressLines(total=2000, reused=400)  # 400 done by an earlier run
    for done, t in [(450, 101.0), (500, 110.0), (540, 111.0), (600, 115.0)]:
        now[0] = t
        lines.update(done)
    # 500 at 10 s: 100 images in 10 s, 1500 left; the next line 100 images on (5%): 600 at
    # 15 s, 200 images in 15 s, 1400 left
    assert capsys.readouterr().err.splitlines() == [
        "prepare: 500 of 2,000 images (25%), 2m30s left",
        "prepare: 600 of 2,000 images (30%), 1m45s left"]
