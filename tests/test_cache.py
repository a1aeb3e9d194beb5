"""The cache `budgetvit prepare` makes, CacheData and `budgetvit bench-data` on real JPEG trees
(Fashion-MNIST images at several sizes, scikit-image's natural photos) with every kind of bad
file: labels and class order as ImageFolder, the loader interface, exact resume, training on the
cache. Making it: test_prepare.py; the DALI backend: test_dali.py."""
import errno
import json
import os
import shutil
import subprocess
import sys

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
from budgetvit.train import train

from .conftest import crash_at_step, needs_fmnist, tiny_config
from .imagetree import damaged_copy

pytest.importorskip("skimage")
pytestmark = needs_fmnist

CLASSES = ["bag", "coat", "photo", "sneaker"]
AUG = AugSection(crop_scale_min=0.35)


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


def test_damaged_records_are_counted_not_fatal(caches, tmp_path, capsys):
    dst = damaged_copy(caches[0], tmp_path / "cache", image=5)
    d = CacheData(str(dst), batch_size=4, seed=0, aug=AUG, device="cpu", num_workers=0, size=16)
    for _ in range(d.batches_per_epoch):  # one epoch touches every image
        x, _ = d.next_batch()
        assert x.shape == (4, 3, 16, 16)
    assert d.bad_images == 1
    split = d.train_split  # (its shard and place named, a record keeping no file name)
    assert capsys.readouterr().err == (
        f"warning: unreadable training image in {dst / cache.shard_name('train', split.shards[5])} "
        f"at byte {split.offsets[5, 0]}: the next readable one stands in for it, each epoch\n")


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
                                          r"to evaluate on a part of train instead, train "
                                          r"with --set data.holdout=0.1; or prepare it again"):
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
