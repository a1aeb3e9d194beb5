"""`budgetvit eval --data-path` reads the folder as what it is: a run trained on a prepared
cache scored on the original tree's val/ JPEGs (the benchmark's split, not the cache's
re-encoded, downsized copy), and a tree's run on a cache's val. A holdout stays the run's own."""
import os
import shutil

import pytest

from budgetvit import evaluate as evaluate_module
from budgetvit import inference
from budgetvit.cli import main
from budgetvit.config import ConfigError, DataSection
from budgetvit.data import eval_dataset, folder_kinds
from budgetvit.data.cache_loader import CacheData
from budgetvit.data.imagefolder import FolderEvalSplit
from budgetvit.runtime import resolve

from .conftest import needs_fmnist, write_image_tree
from .test_data_faults import AUG, refuses_a_renamed_class, train_args

pytestmark = needs_fmnist
CLASSES = ["bag", "coat", "sneaker"]
VAL_IMAGES = 3 * 3  # write_image_tree's val/: 3 classes x per_class_val


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(tree, its cache at 32 px, a run trained on the cache, a run trained on the tree)."""
    base = tmp_path_factory.mktemp("eval-split")
    tree = write_image_tree(base / "tree", per_class_train=4, per_class_val=3)
    cache_dir = base / "cache"
    assert main(["prepare", "--src", str(tree), "--dst", str(cache_dir), "--max-size", "32",
                 "--workers", "1", "--quiet"]) == 0
    assert main([*train_args(cache_dir, base / "cache-run"), "data.dataset=cache"]) == 0
    here = os.getcwd()
    os.chdir(base)  # the tree given relative to it (test_a_relative_data_path_...)
    try:
        assert main(train_args("tree", base / "tree-run")) == 0
    finally:
        os.chdir(here)
    return tree, cache_dir, base / "cache-run", base / "tree-run"


def scored(monkeypatch, capsys, run, data_path):
    """`budgetvit eval` of `run` on `data_path`: (its output lines, [(data, result)] of each
    evaluate() call it made)."""
    calls, real = [], evaluate_module.evaluate

    def spy(model, data, *args, **kw):
        calls.append((data, real(model, data, *args, **kw)))
        return calls[-1][1]
    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    capsys.readouterr()
    where = ["--data-path", str(data_path)] if data_path else []  # (None: the run's)
    assert main(["eval", "--checkpoint", str(run), *where, "--device", "cpu"]) == 0
    return capsys.readouterr().out.strip().splitlines(), calls


def expected(run, data) -> dict:
    """evaluate() of the run's model on `data` at its final size, outside the command."""
    ld = inference.load(str(run))
    ld.cfg.train.device = "cpu"
    return evaluate_module.evaluate(ld.model, data, 32, ld.cfg.train.eval_batch_size,
                                    resolve(ld.cfg.train))


def test_a_cache_run_is_scored_on_the_trees_original_val(runs, monkeypatch, capsys):
    tree, cache_dir, cache_run, _ = runs
    lines, calls = scored(monkeypatch, capsys, cache_run, tree)
    assert lines[0].endswith(", imagefolder val")
    assert all(isinstance(data, FolderEvalSplit) for data, _ in calls)
    assert [r["images"] for _, r in calls] == [VAL_IMAGES, VAL_IMAGES]  # model and EMA
    want = expected(cache_run, FolderEvalSplit(str(tree), CLASSES, seed=0, device="cpu",
                                               num_workers=0))
    assert calls[0][1] == want  # the same number as evaluate() on the tree's val/
    size, top1, top5 = lines[2].split()[:3]
    assert (size, top1, top5) == ("32", f"{want['top1']:.2f}", f"{want['top5']:.2f}")
    # A copy of val/ alone (no train/) is an image tree too.
    val_alone = tree.parent / "val-alone"
    shutil.copytree(tree / "val", val_alone / "val")
    assert scored(monkeypatch, capsys, cache_run, val_alone)[0][1:] == lines[1:]
    # The run's own cache still gives the cache's val (the re-encoded 32 px copies).
    lines, calls = scored(monkeypatch, capsys, cache_run, cache_dir)
    assert lines[0].endswith(", cache val") and isinstance(calls[0][0], CacheData)
    assert calls[0][1]["images"] == VAL_IMAGES
    # What the cache loader tells a run, eval tells too: the view of 32 px is 37 px.
    assert lines[1] == ("warning: the cache's images are at most 32 px on their shorter side, "
                        "and evaluation at 32 px resizes them to 37 px: they are upsampled "
                        "(prepare the cache with --max-size 37 or more)")


def test_a_relative_data_path_is_kept_absolute(runs, monkeypatch, capsys, tmp_path):
    """Trained with data.path=tree from the tree's folder, evaluated from another one."""
    tree_run = runs[3]
    monkeypatch.chdir(tmp_path)
    _, calls = scored(monkeypatch, capsys, tree_run, None)  # (it said: no val/ folder in tree)
    assert [r["images"] for _, r in calls] == [VAL_IMAGES, VAL_IMAGES]  # model and EMA


def test_a_tree_run_is_scored_on_a_caches_val(runs, monkeypatch, capsys):
    tree, cache_dir, _, tree_run = runs
    lines, calls = scored(monkeypatch, capsys, tree_run, cache_dir)
    assert lines[0].endswith(", cache val") and isinstance(calls[0][0], CacheData)
    want = expected(tree_run, CacheData(str(cache_dir), batch_size=12, seed=0, aug=AUG,
                                        device="cpu", num_workers=0, size=32))
    assert calls[0][1] == want and want["images"] == VAL_IMAGES
    assert lines[3].split()[1] == f"{want['top1']:.2f}"  # (after the cache's note, a header)


def test_a_tree_with_a_class_the_cache_run_lacks_is_refused(runs, tmp_path, capsys):
    tree, _, cache_run, _ = runs
    refuses_a_renamed_class(cache_run, tree, tmp_path / "other", capsys)


def test_the_folder_decides_but_a_holdout_needs_the_runs_own_kind(runs, tmp_path):
    tree, cache_dir, _, _ = runs
    (tmp_path / "empty").mkdir()
    assert [folder_kinds(str(p)) for p in (tree, tree / "val", cache_dir, tmp_path / "empty")] \
        == [["imagefolder"], [], ["cache"], []]
    both = tmp_path / "both"  # (a cache made inside its tree by earlier versions)
    shutil.copytree(tree, both)
    shutil.copy(cache_dir / "meta.json", both)
    assert folder_kinds(str(both)) == ["cache", "imagefolder"]
    cases = [("cache", tree, "imagefolder"), ("imagefolder", cache_dir, "cache"),
             ("cache", cache_dir, "cache"), ("fashion_mnist", tree, "fashion_mnist"),
             ("cache", tmp_path / "empty", "cache"),  # (the run's own errors say what is wrong)
             ("imagefolder", both, "imagefolder"), ("cache", both, "cache")]
    for run_kind, path, kind in cases:
        assert eval_dataset(DataSection(dataset=run_kind, path="/x"), str(path)) == kind
    held = DataSection(dataset="cache", path=str(cache_dir), holdout=0.25)
    with pytest.raises(ConfigError, match=f"^--data-path {tree} is an image tree, but the run is "
                                          f"evaluated on the 0.25 of its training images it held "
                                          f"out \\(data.holdout\\), rows of a budgetvit cache: "
                                          f"give it a budgetvit cache$"):
        eval_dataset(held, str(tree))
    assert eval_dataset(held, str(cache_dir)) == "cache"
