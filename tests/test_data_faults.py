"""Broken data, found and named: unreadable training images counted once per meeting (tree and
cache), a training or evaluation split with nothing readable, class folders that do not match
(val/ vs train/, an eval tree vs the checkpoint), a cache with a missing or cut shard, float
images, a dangling symlink and SIGTERM in `budgetvit prepare`, and `budgetvit bench-data` with a
batch larger than the tree (Fashion-MNIST's files: test_fmnist_files.py)."""
import os
import re
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

from budgetvit.cli import main
from budgetvit.config import AugSection, ConfigError
from budgetvit.data import cache
from budgetvit.data.cache_loader import CacheData
from budgetvit.data.imagefolder import FolderData, FolderEvalSplit

from .conftest import needs_fmnist, tiny_config, write_image_tree
from .imagetree import damaged_copy

AUG = AugSection(crop_scale_min=0.35)
# conftest.tiny_config's overrides, for `budgetvit train` on the command line, on image trees.
TINY = ["train.device=cpu",  # also where there is a GPU: the CUDA tests ask for it
        "model.dim=32", "model.depth=2", "model.heads=2", "train.warmup_steps=1",
        "train.log_every=5", "data.dataset=imagefolder", "data.num_workers=0",
        "train.batch_size=12", "train.eval_batch_size=12", "curriculum.stages=16:0.5,32:0.5",
        "curriculum.final_size_px=32"]


def folder(root, **kw):
    return FolderData(str(root), **{**dict(batch_size=12, seed=0, aug=AUG, device="cpu",
                                         num_workers=0, size=16), **kw})


def train_args(root, out, budget="3steps"):
    return ["train", "--budget", budget, "--out", str(out), "--set", *TINY,
            f"data.path={root}"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def refuses_a_renamed_class(run, tree, other, capsys) -> None:
    """`budgetvit eval` of `run` on a copy (at `other`) of the tree's val/ with coat renamed
    jacket: exit 2, naming the class the checkpoint lacks."""
    shutil.copytree(tree / "val", other / "val")
    (other / "val" / "coat").rename(other / "val" / "jacket")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data-path", str(other),
                 "--device", "cpu"]) == 2
    assert one_line_error(capsys) == (
        f"error: {other / 'val'} has class folders that the checkpoint's classes lack: jacket")


def damage_shards(root: Path, split: str) -> None:
    """Every record of `split` zeroed in place, the shard files keeping their sizes."""
    for shard in sorted(root.glob(f"{split}-*.bin")):
        shard.write_bytes(bytes(shard.stat().st_size))


# ----------------------------------------------------------------------------- training

@needs_fmnist
def test_consecutive_unreadable_tree_images_are_each_counted_once(tmp_path):
    """Three zero-byte images in a row (samples 0, 1, 2): each one met is one bad image, not
    one per failed read on the way to its stand-in (that would be 3 + 2 + 1 = 6 an epoch).
    36 images, batches of 12: an epoch meets every image once."""
    root = write_image_tree(tmp_path / "tree")  # 12 train images a class
    for path in sorted((root / "train" / "bag").iterdir())[:3]:
        path.write_bytes(b"")
    d = folder(root)
    assert (d.num_images, d.batches_per_epoch) == (36, 3)
    for epoch in (1, 2):
        labels = torch.cat([d.next_batch()[1] for _ in range(d.batches_per_epoch)])
        assert d.bad_images == 3 * epoch
        # The stand-in is the next readable image, bag_003: still a bag.
        assert labels.bincount().tolist() == [12, 12, 12]
    assert d.state_dict() == {"epoch": 2, "batch": 0, "bad_images": 6, "num_images": 36}


@needs_fmnist
def test_consecutive_damaged_cache_records_are_each_counted_once(caches, tmp_path):
    """Records 5, 6 and 7 of the cache damaged: 3 bad images an epoch (44 images, batches of
    4, every image met once), not 3 + 2 + 1 failed reads."""
    dst = damaged_copy(caches[0], tmp_path / "d5", image=5)
    dst = damaged_copy(dst, tmp_path / "d6", image=6)
    dst = damaged_copy(dst, tmp_path / "d7", image=7)
    d = CacheData(str(dst), batch_size=4, seed=0, aug=AUG, device="cpu", num_workers=0, size=16)
    assert (d.num_images, d.batches_per_epoch) == (44, 11)
    for epoch in (1, 2):
        for _ in range(d.batches_per_epoch):
            x, _ = d.next_batch()
            assert x.shape == (4, 3, 16, 16)
        assert d.bad_images == 3 * epoch


@needs_fmnist
def test_no_readable_training_image_stops_train_with_one_line(tmp_path, capsys):
    """Every training file junk (val/ sound): the search for a stand-in gives up after
    min(MAX_STAND_IN_TRIES, 36) files and `budgetvit train` exits 2 with one line, leaving
    no run folder."""
    root = write_image_tree(tmp_path / "tree")
    for path in (root / "train").rglob("*.jpg"):
        path.write_bytes(b"not a picture\n")
    start = time.perf_counter()
    assert main(train_args(root, tmp_path / "run")) == 2
    err = one_line_error(capsys)
    assert "error: 36 unreadable training images in a row: is the data intact" in err
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "run").exists()  # refused at the first batch: nothing written


@needs_fmnist
def test_no_readable_evaluation_image_is_refused_before_training(tmp_path, capsys):
    """Every val/ file zero bytes: FolderData refuses the tree at once (not at the first
    evaluation, maybe hours later), and `budgetvit train` exits 2 leaving no run folder."""
    root = write_image_tree(tmp_path / "tree")
    for path in (root / "val").rglob("*.jpg"):
        path.write_bytes(b"")
    message = f"no readable image in the evaluation split of {root} (val, 12 files)"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        folder(root)
    out = tmp_path / "runs" / "run"
    assert main(train_args(root, out)) == 2
    assert one_line_error(capsys) == f"error: {message}"
    assert not (tmp_path / "runs").exists()


@needs_fmnist
def test_a_val_class_that_train_lacks_is_refused(tmp_path, capsys):
    """val/boot with train/ lacking boot: its images would be dropped unseen. Training and
    prepare both refuse the tree naming the folder; prepare writes nothing."""
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    (root / "val" / "boot").mkdir()
    shutil.copy(next((root / "val" / "bag").iterdir()), root / "val" / "boot" / "b.jpg")
    with pytest.raises(ConfigError, match=re.escape(
            f"{root / 'val'} has class folders that train/ lacks: boot")):
        folder(root, batch_size=4)
    dst = tmp_path / "cache"
    assert main(["prepare", "--src", str(root), "--dst", str(dst), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert err.endswith("/val has class folders that train/ lacks: boot"), err
    assert not dst.exists()


@needs_fmnist
def test_hidden_folders_and_files_are_not_data(tmp_path):
    """Jupyter's .ipynb_checkpoints/ (as a class folder, and inside one) and macOS's ._x.jpg
    resource forks: no class of their own, no samples (they would shift every label by one and
    count as unreadable images)."""
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    a_jpeg = next((root / "train" / "bag").iterdir())
    for hidden in (root / "train" / ".ipynb_checkpoints", root / "val" / ".ipynb_checkpoints",
                   root / "train" / "coat" / ".ipynb_checkpoints"):
        hidden.mkdir()
        shutil.copy(a_jpeg, hidden / "copy.jpg")
    (root / "train" / "bag" / "._resource.jpg").write_bytes(b"\0\5\26\7 Mac OS X")
    data = folder(root, batch_size=4)
    assert data.classes == ["bag", "coat", "sneaker"]
    assert data.num_images == 12 and len(data.val_samples) == 6
    assert main(["prepare", "--src", str(root), "--dst", str(tmp_path / "cache"), "--quiet"]) == 0
    meta = cache.read_meta(tmp_path / "cache")
    assert meta["classes"] == ["bag", "coat", "sneaker"] and meta["bad_files"] == 0


@needs_fmnist
def test_a_train_class_with_no_images_is_refused(tmp_path, capsys):
    """train/boot empty (or holding hidden files alone): a class the model would never see,
    refused naming it; val/ may still lack classes."""
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    (root / "train" / "boot").mkdir()
    (root / "train" / "boot" / ".DS_Store").write_bytes(b"Bud1")
    with pytest.raises(ConfigError, match=re.escape(
            f"{root / 'train'} has class folders with no images: boot")):
        folder(root, batch_size=4)
    assert main(["prepare", "--src", str(root), "--dst", str(tmp_path / "cache"), "--quiet"]) == 2
    assert one_line_error(capsys).endswith("/train has class folders with no images: boot")


@needs_fmnist
def test_eval_reads_val_alone_and_refuses_classes_the_checkpoint_lacks(tmp_path, capsys):
    """A run trained on bag/coat/sneaker, evaluated on a tree where coat is renamed jacket:
    its labels would mean another class, so exit 2 naming it. A copy of val/ alone (no
    train/) scores as the whole tree does; one without the bag folder scores the classes it
    holds, labelled as the checkpoint's, and says so (as training's header does)."""
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    run = tmp_path / "run"
    assert main(train_args(root, run)) == 0
    refuses_a_renamed_class(run, root, tmp_path / "other", capsys)

    def scores(tree):
        assert main(["eval", "--checkpoint", str(run), "--data-path", str(tree),
                     "--device", "cpu"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[0] == "size")
        assert lines[0].endswith("imagefolder val") and lines[header + 1].split()[0] == "32"
        return lines[1:header + 2]
    whole = scores(root)
    val_alone = tmp_path / "val-alone"
    shutil.copytree(root / "val", val_alone / "val")
    assert scores(val_alone) == whole
    shutil.rmtree(val_alone / "val" / "bag")  # coat and sneaker keep the labels 1 and 2
    data = FolderEvalSplit(str(val_alone), ["bag", "coat", "sneaker"], seed=0, device="cpu",
                           num_workers=0)
    assert [label for _, label in data.val_samples] == [1, 1, 2, 2]
    missing = ("note: val/ has no image of 1 of the 3 classes (bag): top-1 and top-5 are over "
               "the others")
    assert data.notes == (missing,) and scores(val_alone)[0] == missing
    assert folder(root, batch_size=4).notes == () and whole[0] != missing
    shutil.rmtree(root / "val" / "bag")
    assert folder(root, batch_size=4).notes == (missing,)  # (a run's header says them)


@needs_fmnist
def test_eval_refuses_a_cache_with_other_classes_than_the_checkpoint(tmp_path, capsys):
    """A run on a cache, evaluated on the cache of a tree where coat is renamed jacket: every
    label would mean another class, so exit 2 naming both."""
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    other = tmp_path / "other"
    shutil.copytree(root, other)
    for split in ("train", "val"):
        (other / split / "coat").rename(other / split / "jacket")
    for tree, cache_dir in ((root, tmp_path / "cache"), (other, tmp_path / "other-cache")):
        assert main(["prepare", "--src", str(tree), "--dst", str(cache_dir), "--max-size", "32",
                     "--workers", "1", "--quiet"]) == 0
    run = tmp_path / "run"
    assert main([*train_args(tmp_path / "cache", run), "data.dataset=cache"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data-path", str(tmp_path / "other-cache"),
                 "--device", "cpu"]) == 2
    assert one_line_error(capsys) == (
        f"error: {tmp_path / 'other-cache'} has other classes than the checkpoint was trained "
        f"on (3 vs 3; differing: coat, jacket)")


# ----------------------------------------------------------------------------- the cache

@needs_fmnist
@pytest.mark.parametrize("shard, cut", [("train-00001.bin", None), ("train-00002.bin", 100),
                                        ("val-00000.bin", None), ("val-00000.bin", 1)])
def test_a_missing_or_cut_shard_is_a_damaged_cache(caches, tmp_path, shard, cut):
    """A shard file gone, or shorter than its index says (a copy cut short): the cache is
    refused when opened, naming the file, instead of every image in it standing in."""
    dst = tmp_path / "cache"
    shutil.copytree(caches[0], dst)
    path = dst / shard
    size = path.stat().st_size
    if cut is None:
        path.unlink()
        found = "is missing"
    else:
        with open(path, "r+b") as f:
            f.truncate(size - cut)
        found = f"holds {size - cut} of {size} bytes"  # records fill a shard to its end
    message = (f"the cache {dst} is damaged: {shard} {found}; run budgetvit prepare again "
               f"(the same --src and --dst) to make it anew")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        CacheData(str(dst), batch_size=4, seed=0, aug=AUG, device="cpu", num_workers=0,
                  size=16)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        cache.CacheSplit(dst, shard.split("-")[0])
    other = "val" if shard.startswith("train") else "train"
    assert len(cache.CacheSplit(dst, other)) == {"train": 44, "val": 15}[other]
    # As the message says: prepare makes that shard again, as it was, and the cache reads.
    meta = cache.read_meta(dst)
    assert main(["prepare", "--src", meta["source"], "--dst", str(dst), "--quiet",
                 "--max-size", "64", "--shard-size", "16"]) == 0
    assert path.read_bytes() == (caches[0] / shard).read_bytes()
    assert len(cache.CacheSplit(dst, shard.split("-")[0])) == {"train": 44, "val": 15}[
        shard.split("-")[0]]
    assert cache.read_meta(dst)["splits"] == meta["splits"]


@needs_fmnist
def test_an_evaluation_with_every_image_left_out_has_no_score(caches, tmp_path, capsys):
    """Every val record damaged (the shards keep their sizes): each is left out, and with
    nothing left evaluate() says so instead of dividing by zero (in its error alone)."""
    from budgetvit.config import model_shape
    from budgetvit.evaluate import evaluate
    from budgetvit.models import VisionTransformer
    from budgetvit.runtime import resolve
    dst = tmp_path / "cache"
    shutil.copytree(caches[0], dst)
    damage_shards(dst, "val")
    cfg = tiny_config("train.device=cpu")
    d = CacheData(str(dst), batch_size=4, seed=0, aug=AUG, device="cpu", num_workers=0, size=16)
    model = VisionTransformer(model_shape(cfg, d.num_classes, d.in_chans))
    with pytest.raises(ConfigError, match=r"^no readable image in the evaluation split \(val\)$"):
        evaluate(model, d, 16, 5, resolve(cfg.train))
    assert d.left_out == 15 and capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- prepare

@needs_fmnist
def test_float_images_keep_their_grey_levels(tmp_path):
    """32-bit float images (mode F, e.g. scientific TIFFs): values in 0-1 are scaled to 0-255
    (PIL's own conversion clips them, all black); values beyond 1 are read as 0-255. The tree
    loader and prepare share the conversion (to_rgb)."""
    from budgetvit.data.tree import to_rgb
    ramp = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    for name, values in (("unit", ramp), ("bytes", ramp * 255)):
        Image.fromarray(values, mode="F").save(tmp_path / f"{name}.tiff")
        with Image.open(tmp_path / f"{name}.tiff") as img:
            assert img.mode == "F"
            rgb = np.asarray(to_rgb(img)).astype(np.float32)
        assert rgb.shape == (48, 64, 3) and (rgb == rgb[..., :1]).all()
        assert np.abs(rgb[..., 0] - ramp * 255).max() <= 1.0, name


def test_16_bit_images_of_either_byte_order_keep_their_grey_levels(tmp_path):
    """16-bit greyscale in any byte order (a big-endian TIFF opens as I;16B, which PIL's point()
    refuses) and 32-bit integers within 16 bits: value v becomes v / 256 in 8 bits, never
    unreadable."""
    from budgetvit.data.tree import open_rgb, to_rgb
    ramp = np.linspace(0, 65535, 48 * 64).astype(np.uint16).reshape(48, 64)
    Image.fromarray(ramp.astype(">u2")).save(tmp_path / "big_endian.tiff")
    with Image.open(tmp_path / "big_endian.tiff") as img:
        assert img.mode == "I;16B"
    rgb = np.asarray(open_rgb(str(tmp_path / "big_endian.tiff"))).astype(np.float32)
    assert rgb.shape == (48, 64, 3) and np.abs(rgb[..., 0] - ramp / 256).max() <= 1.0
    for mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        assert to_rgb(Image.new(mode, (4, 4), 50000)).getpixel((0, 0)) == (195,) * 3, mode
    # Values beyond 16 bits (a 32-bit TIFF) span the 32-bit range: v / 2**23, not all white.
    deep = np.linspace(0, 2 ** 31 - 1, 48 * 64).astype(np.int32).reshape(48, 64)
    Image.fromarray(deep).save(tmp_path / "int32.tiff")
    rgb = np.asarray(open_rgb(str(tmp_path / "int32.tiff"))).astype(np.float32)
    assert np.abs(rgb[..., 0] - deep / 2 ** 23).max() <= 1.0


def test_bad_file_names_with_tabs_or_line_breaks_stay_one_row(tmp_path):
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    for name in ("tab\there.jpg", "two\nlines.jpg", "back\\slash.jpg"):
        (root / "train" / "bag" / name).write_bytes(b"not an image")
    assert main(["prepare", "--src", str(root), "--dst", str(tmp_path / "cache"), "--quiet",
                 "--max-size", "32"]) == 0
    rows = (tmp_path / "cache" / cache.BAD_FILES).read_text().splitlines()
    assert [row.split("\t")[0] for row in rows] == [
        "path", "train/bag/back\\\\slash.jpg", "train/bag/tab\\there.jpg",
        "train/bag/two\\nlines.jpg"]


def test_prepare_lists_a_dangling_symlink_and_finishes(tmp_path, capsys):
    """train/bag/ghost.jpg points nowhere: prepare converts the rest and lists it as a bad
    file (planning the cache must not stat it to death)."""
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    (root / "train" / "bag" / "ghost.jpg").symlink_to(tmp_path / "gone.jpg")
    dst = tmp_path / "cache"
    assert main(["prepare", "--src", str(root), "--dst", str(dst), "--quiet", "--workers",
                 "1", "--max-size", "32"]) == 0
    assert "12 train + 6 val images of 3 classes, 1 bad files skipped" in capsys.readouterr().out
    rows = (dst / cache.BAD_FILES).read_text().splitlines()
    assert rows[0] == "path\treason" and len(rows) == 2
    path, reason = rows[1].split("\t")
    assert path == "train/bag/ghost.jpg" and reason.startswith("FileNotFoundError"), reason
    assert cache.read_meta(dst)["bad_files"] == 1


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids.update(int(k) for k in task.read_text().split())
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie, already dead, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _slow_tree(root: Path, count: int) -> Path:
    """count training images of 1600 x 1600 px PNG (~0.1 s each to convert on one core), as
    hard links to one file, in two classes; two val images."""
    import skimage.data
    src = root / "big.png"
    root.mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).resize((1600, 1600)).save(src)
    for split, n in (("train", count), ("val", 2)):
        for i in range(n):
            folder = root / split / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            os.link(src, folder / f"{i:04d}.png")
    src.unlink()
    return root


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl-c"])
def test_sigterm_or_ctrl_c_stops_prepare_and_its_workers_and_a_rerun_finishes(tmp_path, capsys,
                                                                              ctrl_c):
    """SIGTERM mid-conversion (a scheduler's kill) to prepare, or SIGINT to it and its workers
    (Ctrl-C in a terminal): it stops (exit 130, one line saying how many shards are kept), its
    worker processes exit with it, and the same command again resumes from the finished
    shards to a complete cache."""
    pytest.importorskip("skimage")
    root = _slow_tree(tmp_path / "tree", 48)
    dst = tmp_path / "cache"
    args = ["prepare", "--src", str(root), "--dst", str(dst), "--max-size", "64",
            "--shard-size", "2", "--workers", "2", "--quiet"]
    # Output to files, not pipes: workers left behind would hold a pipe open.
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "budgetvit", *args], stdout=out,
                                stderr=err, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        # Both workers forked (the handler is set before) and a shard finished: converting.
        while proc.poll() is None and time.monotonic() < deadline:
            workers |= _children(proc.pid)
            if len(workers) >= 2 and list((dst / cache.PARTS).glob("train-*.json")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "prepare ended before it could be interrupted"
        assert len(workers) >= 2 and not (dst / cache.META).exists()
        if ctrl_c:  # (a Python KeyboardInterrupt anywhere in the pool once hung it for good)
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stderr = (tmp_path / "err").read_text()
        assert code == 130, stderr
        deadline = time.monotonic() + 10  # workers the parent left behind would run on
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)]
    finally:  # whatever happened: nothing of this test runs on (its own process group)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert not (dst / cache.META).exists()
    done = len(list((dst / cache.PARTS).glob("*-*.json")))
    assert 1 <= done < 25  # 24 train + 1 val shards
    assert stderr == (
        f"stopped: {done} of 25 shards done and kept; rerun the same command to go on\n")
    assert main(args) == 0
    assert "48 train + 2 val images of 2 classes, no bad files" in capsys.readouterr().out
    assert cache.read_meta(dst)["resumed_shards"] == done
    assert len(cache.CacheSplit(dst, "train")) == 48


# ----------------------------------------------------------------------------- bench-data

@needs_fmnist
def test_bench_data_with_a_batch_larger_than_the_tree_exits_2_promptly(trees):
    """44 training images, --batch-size 64: refused before the baseline's loader, which
    would wait forever for a first full batch."""
    cmd = [sys.executable, "-m", "budgetvit", "bench-data", "--src", str(trees[0]),
           "--batch-size", "64", "--workers", "1", "--sizes", "16", "--repeats", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: --batch-size 64 exceeds the 44 training images"


@needs_fmnist
def test_bench_data_on_a_tree_with_unreadable_images_names_the_baseline(tmp_path, capsys):
    """Plain torchvision stops at the first unreadable image; the loader does not."""
    root = write_image_tree(tmp_path / "tree")  # 12 train images a class, 36 in all
    for path in (root / "train" / "bag").iterdir():  # a third of every batch of 32
        path.write_bytes(b"")
    args = ["bench-data", "--src", str(root), "--sizes", "16", "--workers", "1",
            "--batch-size", "32", "--batches", "1", "--warmup", "0", "--repeats", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the torchvision baseline stopped at an unreadable image (")
    assert err.endswith("--skip-baseline times FolderData alone") and len(err.splitlines()) == 1
    assert main([*args, "--skip-baseline"]) == 0
    assert "| 16 | nan |" in capsys.readouterr().out
