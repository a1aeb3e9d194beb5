"""The training-data stream: FolderData on a real JPEG tree (a size change with workers running,
the trainer's global RNG with 0 workers, exact resume at a curriculum stage boundary, the file
list the workers read, training and evaluation workers that leave stop signals to the
trainer), and a dataset smaller than one batch."""
import multiprocessing
import os
import signal
import subprocess
import time

import pytest
import torch

from budgetvit import checkpoint
from budgetvit.config import AugSection
from budgetvit.data import imagefolder
from budgetvit.data.imagefolder import FolderData
from budgetvit.data.tree import scan
from budgetvit.data.sample_table import SampleTable
from budgetvit.train import train

from .conftest import crash_at_step, needs_fmnist, tiny_config, write_image_tree

AUG = AugSection(crop_scale_min=0.35, randaugment_ops=1)  # v2 draws from the global RNG


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_image_tree(tmp_path_factory.mktemp("tree"))  # 36 train, 12 val images


def folder(tree, **kw):
    return FolderData(str(tree), **{**dict(batch_size=8, seed=3, aug=AUG, device="cpu",
                                         num_workers=2, size=16), **kw})


@needs_fmnist
def test_batches_after_a_size_change_have_the_new_size(tree):
    """The workers prefetch 2 x 4 batches: none of them may be trained at the old size, and the
    batches after the change are those of a loader started there (a resume at that step)."""
    others = set(multiprocessing.active_children())
    d = folder(tree)
    d.next_batch()
    state = d.state_dict()
    d.set_size(32)
    after = [d.next_batch() for _ in range(10)]
    assert [x.shape[-1] for x, _ in after] == [32] * 10
    resumed = folder(tree, size=32)
    resumed.load_state_dict(state)
    for x, y in after:
        xr, yr = resumed.next_batch()
        assert torch.equal(x, xr) and torch.equal(y, yr)
    del resumed
    d.set_size(24)
    assert [d.next_batch()[0].shape[-1] for _ in range(10)] == [24] * 10
    assert len(set(multiprocessing.active_children()) - others) == 2  # old workers are gone


@needs_fmnist
def test_zero_workers_leave_the_global_rng_alone(tree):
    """With 0 workers the per-image seeding runs in the trainer, whose global RNG mixup and
    drop path draw from: it must not move, and the images must be the workers' images."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    d = folder(tree, num_workers=0)
    batches = [d.next_batch() for _ in range(2)]
    list(d.eval_batches(16, 8))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1)  # another global state: the same images
    workers = folder(tree, num_workers=2)
    for x, y in batches:
        xw, yw = workers.next_batch()
        assert torch.equal(x, xw) and torch.equal(y, yw)


@needs_fmnist
def test_resume_at_a_stage_boundary_with_workers_gives_identical_weights(tree, tmp_path):
    """The checkpoint at step 4 is where 16 px turns to 32 px: the uninterrupted run's workers
    hold 16 px batches prefetched then, the resumed run's loader starts at 32 px."""
    args = ("data.dataset=imagefolder", f"data.path={tree}", "data.num_workers=2",
            "train.batch_size=8", "train.budget=8steps", "checkpoint.every_steps=4",
            "train.eval_batch_size=12", "curriculum.stages=16:0.5,32:0.5",
            "curriculum.final_size_px=32", "train.deterministic=true", "aug.mixup=0.2",
            "model.drop_path=0.1", "train.warmup_steps=0", "train.ema=false")
    train(tiny_config(*args), tmp_path / "straight")
    crash_at_step(tiny_config(*args), tmp_path / "resumed", 6)
    assert checkpoint.list_checkpoints(tmp_path / "resumed")[-1].name == "step_00000004.pt"
    train(tiny_config(*args), tmp_path / "resumed")
    a, b = (checkpoint.load(checkpoint.list_checkpoints(tmp_path / run)[-1])["model"]
            for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("holdout,fragment", [
    ("0", "train.batch_size=128 exceeds the 100 training images"),
    ("0.2", "train.batch_size=128 exceeds the 80 training images")])  # 20 held out
def test_a_dataset_smaller_than_a_batch_is_one_line_exit_2(tmp_path, capsys, holdout, fragment):
    from budgetvit.cli import main
    code = main(["train", "--budget", "5steps", "--out", str(tmp_path / "run"), "--set",
                 "data.dataset=synthetic", "data.synthetic_images=100", f"data.holdout={holdout}",
                 "curriculum.final_size_px=32", "curriculum.stages=32:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {fragment}"


@needs_fmnist
def test_unreadable_images_counted_once_for_training_and_kept_on_resume(tmp_path, capsys,
                                                                        monkeypatch):
    """A zero-byte training image is counted each epoch it is met, and the count resumes with
    the position, and named once per process; a zero-byte evaluation image is left out (not
    scored as its neighbour)."""
    root = write_image_tree(tmp_path / "tree")
    bad = next(iter(sorted((root / "train" / "bag").iterdir())))
    bad.write_bytes(b"")
    named = (f"warning: unreadable training image {bad}: the next readable one stands in for "
             f"it, each epoch")
    unreadable = next(iter(sorted((root / "val" / "coat").iterdir())))
    unreadable.write_bytes(b"")
    d = folder(root, num_workers=0)
    for _ in range(d.batches_per_epoch):  # 36 images, 4 batches of 8: 4 images left out
        d.next_batch()
    assert capsys.readouterr().err == named + "\n"
    state = d.state_dict()
    labels = torch.cat([y for _, y in d.eval_batches(16, 5)])
    assert (d.left_out, d.left_out_file) == (1, str(unreadable))  # evaluate() says it
    assert d.bad_images == state["bad_images"]  # evaluations are not counted there
    assert labels.bincount().tolist() == [4, 3, 4]  # bag, coat (one unreadable), sneaker
    capsys.readouterr()
    resumed = folder(root, num_workers=0)
    resumed.load_state_dict(state)
    assert resumed.bad_images == d.bad_images == state["bad_images"]
    monkeypatch.setattr(imagefolder, "MAX_NAMED", 1)  # (the last one named says so)
    for _ in range(8 * resumed.batches_per_epoch):  # eight more epochs: met in most of them
        resumed.next_batch()
    assert 1 <= state["bad_images"] < resumed.bad_images - 4
    assert capsys.readouterr().err == named + " (further ones are counted, not named)\n"


@needs_fmnist
def test_an_evaluation_says_in_one_line_which_images_it_left_out(tmp_path, capsys):
    """A line on stderr with the count and a file (not a Python warning and its source line),
    said again only when the count changes: a run evaluates again and again."""
    from budgetvit.config import model_shape
    from budgetvit.evaluate import evaluate
    from budgetvit.models import VisionTransformer
    from budgetvit.runtime import resolve
    root = write_image_tree(tmp_path / "tree", per_class_train=4, per_class_val=2)
    coats = sorted((root / "val" / "coat").iterdir())
    coats[0].write_bytes(b"")
    d = folder(root, num_workers=0)
    cfg = tiny_config()
    model, rt = VisionTransformer(model_shape(cfg, d.num_classes, d.in_chans)), resolve(cfg.train)
    for _ in range(2):
        assert evaluate(model, d, 16, 4, rt)["images"] == 5
    coats[1].write_bytes(b"")
    assert evaluate(model, d, 16, 4, rt)["images"] == 4
    assert capsys.readouterr().err.splitlines() == [
        f"warning: 1 unreadable image in the evaluation split left out ({coats[0]})",
        f"warning: 2 unreadable images in the evaluation split left out ({coats[0]} and others)"]


@pytest.mark.parametrize("cpus, ranks, workers", [(8, None, 8), (64, "4", 16), (8, "4", 8),
                                                 (3, "64", 1)])
def test_default_workers_share_the_usable_cpus_among_the_ranks(monkeypatch, cpus, ranks,
                                                              workers):
    """data.num_workers=-1: one per CPU this process may use (of the machine's 64), divided
    among the ranks torchrun started on the machine, at least one; not divided where each
    rank has its own share of the CPUs already (torchrun --numa-binding: 8 each of 4 ranks)."""
    from budgetvit.data import tree
    monkeypatch.setattr(tree.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(tree.os, "cpu_count", lambda: 64)
    if ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    else:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert tree.default_workers() == workers


def test_the_workers_file_list_is_a_table_that_reads_as_the_scan(tree):
    """The paths and labels the workers read are those the scan found, in its order (a
    non-ASCII name and a negative index included), held in arrays rather than a list."""
    samples = scan(tree, "train")[0] + [("/data/ünïcode/ß/😀.jpg", 7)]
    table = SampleTable(samples)
    assert len(table) == len(samples) and list(table) == samples
    assert table[-1] == samples[-1] and table[0] == samples[0]
    with pytest.raises(IndexError, match=f"sample {len(samples)} of {len(samples)}"):
        table[len(samples)]
    data = folder(tree)
    assert isinstance(data.dataset.samples, SampleTable)
    assert list(data.dataset.samples) == scan(tree, "train")[0]
    assert isinstance(data.eval_dataset().samples, SampleTable)
    assert list(data.eval_dataset().samples) == scan(tree, "val")[0]


STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)


@pytest.fixture
def trainers_handlers():
    """The stop signals handled as the trainer outside its loop would, by raising: a loader
    worker that ran this handler would die."""
    def trainers_handler(signum, frame):
        raise RuntimeError("the trainer's handler ran in a loader worker")
    inherited = {s: signal.signal(s, trainers_handler) for s in STOP_SIGNALS}
    yield
    for s, h in inherited.items():
        signal.signal(s, h)


def signal_from_outside(workers) -> None:
    """What a Ctrl-C, a closed terminal and Slurm's stop send every process: SIGINT, SIGHUP and
    SIGTERM from another process (the `kill` command here)."""
    for s in STOP_SIGNALS:
        subprocess.run(["kill", f"-{s.name[3:]}", *(str(w.pid) for w in workers)], check=True)
    time.sleep(1)  # (a worker that died would be reported by the loader meanwhile)
    assert all(w.is_alive() for w in workers)


def ended_by_the_trainer(workers) -> None:
    """The trainer's own SIGTERM (its DataLoader's shutdown, multiprocessing's at exit) ends
    the workers at once."""
    for w in workers:
        w.terminate()
        w.join(timeout=5)
    assert [w.exitcode for w in workers] == [0, 0]


def test_workers_leave_stop_signals_to_the_trainer(tree, trainers_handlers):
    """A worker must not stop by itself (the trainer's handler raises outside the training
    loop; PyTorch's own ends a worker on SIGTERM): a dead worker fails the trainer before it
    can finish its step, checkpoint and say how to resume. The workers live on and the batches
    keep coming; the trainer's own SIGTERM (its DataLoader's shutdown, multiprocessing's at
    exit) still ends them at once."""
    data = folder(tree)
    for _ in range(2):  # one batch from each of the 2 workers: both have started
        data.next_batch()
    workers = data._it._workers
    signal_from_outside(workers)
    for _ in range(10):  # past the end of an epoch (36 images, batch 8)
        assert data.next_batch()[0].shape == (8, 3, 16, 16)
    ended_by_the_trainer(workers)


@pytest.mark.parametrize("loader", ["training", "evaluation"])
def test_workers_signalled_as_they_start_live_on(tree, monkeypatch, loader, trainers_handlers):
    """A stop signal can reach workers before their worker_init_fn has run (every size change
    and evaluation starts new ones; a SIGINT would run the trainer's handler, which can raise):
    held back until it has, it is then ignored as any other."""
    from budgetvit.data import loader_workers
    real = loader_workers._leave_stops_to

    def signalled_first(*args):  # (forked workers: the stand-in needs no pickling)
        for s in STOP_SIGNALS:  # from another process
            subprocess.run(["kill", f"-{s.name[3:]}", str(os.getpid())], check=True)
        real(*args)
    monkeypatch.setattr(loader_workers, "_leave_stops_to", signalled_first)
    data = folder(tree)
    if loader == "training":
        for _ in range(6):  # past the end of an epoch (36 images, batch 8)
            assert data.next_batch()[0].shape == (8, 3, 16, 16)
    else:
        labels = [y for _, y in data.eval_batches(16, batch_size=4)]
        assert torch.cat(labels).tolist() == [label for _, label in scan(tree, "val")[0]]


def test_without_sigwaitinfo_workers_keep_pytorchs_sigterm(tree, monkeypatch):
    """Where a thread cannot learn a signal's sender (macOS), workers must not be left with
    SIGTERM blocked: the trainer's terminate() would not end them, and its exit would hang."""
    from budgetvit.data import loader_workers
    monkeypatch.setattr(loader_workers, "SENDER_KNOWN", False)
    data = folder(tree)
    data.next_batch()
    ended_by_the_trainer(data._it._workers)


def test_evaluation_workers_leave_stop_signals_to_the_trainer(tree, trainers_handlers):
    """The same for the workers of an evaluation (the final one runs outside the loop): every
    image is still evaluated."""
    others = set(multiprocessing.active_children())
    batches = folder(tree).eval_batches(16, batch_size=1)  # 12 batches: most still to come
    labels = [next(batches)[1]]
    workers = set(multiprocessing.active_children()) - others
    assert len(workers) == 2
    signal_from_outside(workers)
    labels += [y for _, y in batches]
    assert torch.cat(labels).tolist() == [label for _, label in scan(tree, "val")[0]]


def test_a_trees_files_are_those_torchvisions_imagefolder_lists_in_its_order(tmp_path):
    """tree.class_files lists what torchvision's make_dataset does (its suffixes in any case,
    subfolders, links followed, the same order), less the hidden files, without importing it."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from budgetvit.data.tree import IMAGE_SUFFIXES, class_files
    root = tmp_path / "train"
    for name in ("b/x.JPG", "b/sub/z.png", "b/sub2/a.webp", "b/a.jpeg", "b/Sub/0.pgm",
                 "a/1.tif", "a/deep/er/2.BMP", "a/notes.txt", "a/.hidden.jpg",
                 "a/.ipynb_checkpoints/3.jpg", "a/ä.tiff", "c/q.ppm", "d/none.gif"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    (root / "c" / "linked").symlink_to(root / "a" / "deep")
    classes = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}  # (d: no image; e: no folder)
    theirs = make_dataset(str(root), classes, extensions=IMG_EXTENSIONS, allow_empty=True)
    visible = [(p, y) for p, y in theirs if os.sep + "." not in p[len(str(root)):]]
    assert IMAGE_SUFFIXES == IMG_EXTENSIONS
    assert class_files(str(root), classes) == visible and len(visible) == 10
