"""Malformed input of every kind: one line on stderr naming the problem, exit code 2, and no
work started. Also: a crafted pickle checkpoint is refused instead of run."""
import json
import os
import pickle
import re

import pytest
import torch
from PIL import Image

from budgetvit import cli
from budgetvit.cli import main
from budgetvit.config import (Config, ConfigError, SameOnEveryRank, apply_overrides, from_dict,
                              validate)
from budgetvit.export import save_weights
from budgetvit.models import create_model

# (arguments after `budgetvit`, a fragment the one-line error must contain)
CASES = [
    (["train", "--budget", "0s"], "train.budget must be positive"),
    (["train", "--budget=-5m"], "expected a duration like 90s"),
    (["train", "--budget", "-5m"], "'-5m' reads as an option: write --budget=-5m"),
    (["train", "--budget", "five minutes"], "expected a duration like 90s"),
    (["train", "--budget", "5x"], "expected a duration like 90s"),
    (["train", "--budget", "2.5steps"], "step count must be whole"),
    (["train", "--preset", "imagenet"], "unknown preset 'imagenet'; choose one of: fmnist"),
    (["train", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'; optim keys: lr"),
    (["train", "--set", "optimizer.lr=1"], "unknown config section 'optimizer'"),
    (["train", "--set", "optim.lr"], "--set expects key=value, got 'optim.lr'"),
    (["train", "--set", "optim.lr=fast"], "optim.lr: expected float, got 'fast'"),
    (["train", "--set", "optim.lr=0"], "optim.lr=0.0 must be > 0"),
    (["train", "--set", "optim.min_lr=1"], "optim.min_lr=1.0 is above optim.lr"),
    (["train", "--set", "optim.decay=step"], "optim.decay='step' is not allowed; choose one of: cosine, linear"),
    (["train", "--set", "train.batch_size=0"], "train.batch_size=0 must be >= 1"),
    (["train", "--set", "train.batch_size=12.5"], "train.batch_size: expected int, got '12.5'"),
    (["train", "--set", "train.ema=maybe"], "train.ema: expected true/false, got 'maybe'"),
    (["train", "--set", "train.device=tpu"], "train.device='tpu' is not allowed"),
    (["train", "--set", "train.compile_mode=fast"],
     "train.compile_mode='fast' is not allowed; choose one of: default, reduce-overhead"),
    (["train", "--set", "train.compile_scope=layers"], "train.compile_scope='layers' is not allowed"),
    (["train", "--set", "model.name=vit_huge"], "model.name='vit_huge' is not allowed"),
    (["train", "--set", "model.heads=5"], "model.dim=96 is not divisible by model.heads=5"),
    (["train", "--set", "model.drop_path=1.5"], "model.drop_path=1.5 must be <= 0.99"),
    (["train", "--set", "curriculum.final_size_px=30", "curriculum.mode=off"],
     "curriculum.final_size_px=30 is not a multiple of model.patch_size=4"),
    (["train", "--set", "curriculum.mode=paper", "curriculum.start_size_px=18"],
     "curriculum.start_size_px=18 is not a multiple of model.patch_size=4"),
    (["train", "--set", "curriculum.mode=paper", "curriculum.start_size_px=32"],
     "curriculum.final_size_px=28 is below curriculum.start_size_px=32"),
    (["train", "--set", "curriculum.stages=16:0.5,28:0.4"], "shares must sum to 1"),
    (["train", "--set", "curriculum.stages=16:0,28:1"],
     "curriculum.stages gives size 16 a share of 0; every share must be > 0"),
    (["train", "--set", "model.patch_size=3"], "model.base_img_size=28 (vit_micro4_local's; set "
     "it to change it) is not a multiple of model.patch_size=3"),
    (["train", "--set", "curriculum.stages=16-0.5"], "expected 'size:share,...'"),
    (["train", "--set", "curriculum.stages=16:0.5,24:0.5"], "must end at curriculum.final_size_px=28"),
    (["train", "--set", "curriculum.mode=grow"], "curriculum.mode='grow' is not allowed"),
    (["train", "--set", "curriculum.mode=paper", "train.warmup_steps=0"],
     "curriculum.mode=paper with a time budget needs train.warmup_steps >= 1"),
    (["train", "--set", "aug.crop_scale_min=0"], "aug.crop_scale_min=0.0 must be >= 0.01"),
    (["train", "--set", "data.dataset=cifar"], "data.dataset='cifar' is not allowed"),
    (["train", "--set", "data.holdout=0.7"], "data.holdout=0.7 must be <= 0.5"),
    (["train", "--set", "data.dataset=imagefolder"], "needs a root: --set data.path="),
    (["train", "--set", "data.dataset=imagefolder", "data.path=/nonexistent/imagenet",
      "train.budget=5s"], "data.path: /nonexistent/imagenet does not exist"),
    (["train", "--set", "data.path=/nonexistent/fmnist", "train.budget=5s"],
     "data.path: /nonexistent/fmnist does not exist"),
    (["train", "--set", "data.path=/etc/hostname", "train.budget=5s"],
     "data.path: /etc/hostname is not a directory"),
    (["train", "--set", "checkpoint.keep=0"], "checkpoint.keep=0 must be >= 1"),
    (["train", "--budget", "5m", "--set", "train.budget=10m"],
     "--budget and --set train.budget both give the budget; give one"),
    (["bench", "--budget", "5m", "--set", "train.budget=10m"],
     "--budget and --set train.budget both give the budget; give one"),
    (["train", "--budget", "5s", "--out", "/proc/budgetvit-run"], "--out /proc/budgetvit-run is not writable"),
    (["eval", "--checkpoint", "/nonexistent/ckpt.pt"], "checkpoint /nonexistent/ckpt.pt does not exist"),
    (["eval", "--checkpoint", "CORRUPT"], "corrupt.pt: not a PyTorch checkpoint"),  # (text)
    (["eval", "--checkpoint", "AFILE"], "afile: not a PyTorch checkpoint"),
    (["eval", "--checkpoint", "EMPTYDIR"], "no checkpoints in"),
    (["predict", "--checkpoint", "CRAFTED", "x.png"], "refusing to load"),
    (["eval", "--checkpoint", "x", "--img-size", "0"], "image sizes must be positive"),
    (["eval", "--checkpoint", "x", "--img-size", "big"], "expected sizes like 64,128,224"),
    (["info", "--model", "vit_s16", "--sizes", "100"], "100 is not a multiple of the patch size 16"),
    (["info", "--model", "resnet50"], "unknown model 'resnet50'"),
    (["info", "--checkpoint", "EMAEXPORT", "--in-chans", "3"], "--in-chans are the checkpoint's own"),
    (["info", "--checkpoint", "EMPTYDIR"], "no checkpoints in"),
    (["speed", "--batch-size", "0"], "must be >= 1, got 0"),
    (["bench", "--nproc-per-node", "0"], "--nproc-per-node: must be >= 1, got 0"),
    (["bench", "--arm", "results.json: optim.lr=1e-3"], "--arm results.json: names ending in"),
    (["bench", "--set", "train.budget=1m"], "benchmark fmnist-cpu-5m fixes train.budget; drop"),
    (["speed", "--sizes", "30"], "size 30 (--sizes) is not a multiple of the patch size 16"),
    (["export", "--checkpoint", "x", "--out", "w.json"], "--out w.json: give a file name for the weights"),
    (["export", "--checkpoint", "x", "--out", "EMPTYDIR"], "give a file name for the weights"),
    (["predict", "--checkpoint", "OLDEXPORT", "x.png"], "holds the model config alone"),
    (["eval", "--checkpoint", "CUTEXPORT"], "cannot load exported weights"),
    (["eval", "--checkpoint", "GARBLEDEXPORT"], "cannot read"),
    (["predict", "--checkpoint", "EMAEXPORT", "--no-ema", "x.png"], "holds the EMA weights alone"),
    (["export", "--checkpoint", "EMAEXPORT", "--out", "w.pt"], "ending in .safetensors"),
    (["predict", "--checkpoint", "/nonexistent/w.safetensors", "x.png"],
     "exported weights /nonexistent/w.safetensors do not exist"),
    (["bench", "--seeds", "1", "--out", "AFILE"], "afile is a file, not a folder"),
    (["eval", "--checkpoint", "TENSOR"], "is not a budgetvit checkpoint (TypeError: it holds a"),
    (["eval", "--checkpoint", "NEWER"], "error: unknown config key 'train.new_key' in a saved"),
    (["eval", "--checkpoint", "HEADLESS"],  # (load_state_dict's message on one line)
     "is not a budgetvit checkpoint (RuntimeError: Error(s) in loading state_dict"),
    (["export", "--checkpoint", "EMAEXPORT", "--out", "INAFILE"], "cannot make its folder"),
    (["bench", "--arm", "x: 'optim.lr=1"], "--arm x: No closing quotation"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["train", "--budget", "2steps", "--set", "train.batch_size=100000"],  # refused after the
     "exceeds the 60000 training images"),  # run directory was made: it must be gone again
]


class Boom:
    """A pickle that would run a shell command when loaded with plain pickle."""
    def __reduce__(self):
        return (os.system, ("touch /tmp/budgetvit-pwned",))


@pytest.fixture
def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    crafted = tmp_path / "crafted.pt"
    crafted.write_bytes(pickle.dumps({"model": Boom()}))
    empty = tmp_path / "emptyrun"
    empty.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    model = create_model("vit_micro4_local", num_classes=10, in_chans=1)
    old = tmp_path / "old.safetensors"  # as exported before the JSON held classes
    save_weights(model, old)
    old.with_suffix(".json").write_text(json.dumps(model.cfg.to_dict()))
    meta = {"weights": "ema", "step": 3, "classes": [str(i) for i in range(10)], "mean": [0.5],
            "std": [0.25], "config": Config().to_dict()}
    exports = {}
    for name in ("EMAEXPORT", "CUTEXPORT", "GARBLEDEXPORT"):
        exports[name] = tmp_path / f"{name.lower()}.safetensors"
        save_weights(model, exports[name], meta)
    cut = exports["CUTEXPORT"]
    cut.write_bytes(cut.read_bytes()[:5000])
    exports["GARBLEDEXPORT"].with_suffix(".json").write_bytes(b"\xff{ not json")
    tensor, headless = tmp_path / "tensor.pt", tmp_path / "headless.pt"
    torch.save(torch.zeros(3), tensor)
    torch.save({"model_config": model.cfg.to_dict(), "model": {
        k: v for k, v in model.state_dict().items() if not k.startswith("head.")}}, headless)
    newer = tmp_path / "newer.pt"  # a checkpoint of a later version, with a key of its own
    saved = Config().to_dict()
    saved["train"]["new_key"] = 1
    torch.save({"model_config": model.cfg.to_dict(), "model": model.state_dict(),
                "config": saved}, newer)
    return {"CORRUPT": str(corrupt), "CRAFTED": str(crafted), "EMPTYDIR": str(empty),
            "AFILE": str(afile), "OLDEXPORT": str(old), "TENSOR": str(tensor),
            "HEADLESS": str(headless), "INAFILE": str(afile / "w.safetensors"),
            "NEWER": str(newer),
            **{name: str(p) for name, p in exports.items()}}


def test_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("args,fragment", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_malformed_input_gives_one_line_and_exit_2(args, fragment, bad_files, capsys, tmp_path,
                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default runs/ folder would land here
    code = run_cli([bad_files.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert fragment in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_predict_goes_on_past_an_unreadable_image(bad_files, tmp_path, capsys):
    image = tmp_path / "plain.png"
    Image.new("L", (28, 28), 128).save(image)
    assert run_cli(["predict", "--checkpoint", bad_files["EMAEXPORT"], bad_files["AFILE"],
                    str(image)]) == 2
    said = capsys.readouterr()
    assert said.err.splitlines()[1].startswith(f"error: cannot read image {bad_files['AFILE']}: ")
    assert said.out.startswith(f"{image}: ") and "%" in said.out


def test_predict_goes_on_past_a_missing_image_and_a_folder(bad_files, tmp_path, capsys):
    """Named on stderr like an unreadable image, the others still predicted (exit code 2)."""
    image, missing = tmp_path / "plain.png", tmp_path / "missing.png"
    Image.new("L", (28, 28), 128).save(image)
    assert run_cli(["predict", "--checkpoint", bad_files["EMAEXPORT"], str(missing),
                    str(tmp_path), str(image)]) == 2
    said = capsys.readouterr()
    assert said.err.splitlines() == [
        f"predicting with exported weights {bad_files['EMAEXPORT']} (ema weights of step 3) at "
        f"28px",
        f"error: cannot read image {missing}: No such file or directory",
        f"error: cannot read image {tmp_path}: Is a directory"]
    assert said.out.startswith(f"{image}: ") and "%" in said.out


@pytest.mark.parametrize("command, option", [
    (["train", "--budget", "5s", "--out", "{path}"], "--out"),
    (["report", "{run}", "--out", "{path}"], "--out"),
    (["prepare", "--src", "{tree}", "--dst", "{path}"], "--dst"),
    (["bench", "--seeds", "1", "--out", "{path}"], "--out"),
])
@pytest.mark.parametrize("inside", [False, True])
def test_an_output_path_that_is_a_file_is_said_alike(command, option, inside, bad_files,
                                                     tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    afile = bad_files["AFILE"]
    path = f"{afile}/sub" if inside else afile  # a file in place of the folder, or above it
    run = tmp_path / "run"  # (what report takes for a run directory)
    run.mkdir()
    (run / "log.jsonl").write_text("")
    (tmp_path / "tree" / "train").mkdir(parents=True)
    args = [a.format(path=path, run=run, tree=tmp_path / "tree") for a in command]
    assert run_cli(args) == 2
    where = f": {afile}" if inside else ""
    assert capsys.readouterr().err == f"error: {option} {path}{where} is a file, not a folder\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["cache", "imagefolder"])
def test_a_tree_given_as_a_cache_or_a_cache_as_a_tree_says_which(kind, tmp_path, capsys):
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    (tree / "train").mkdir(parents=True)
    cache.mkdir()
    (cache / "meta.json").write_text("{}")
    path = tree if kind == "cache" else cache
    assert run_cli(["train", "--budget", "5s", "--out", str(tmp_path / "run"), "--set",
                    f"data.dataset={kind}", f"data.path={path}"]) == 2
    assert capsys.readouterr().err.strip() == {
        "cache": f"error: data.path: {tree} is an image tree (train/), not a budgetvit cache: "
                 f"train on it with --set data.dataset=imagefolder, or make a cache of it with: "
                 f"budgetvit prepare --src {tree} --dst ANOTHER_FOLDER",
        "imagefolder": f"error: data.path: {cache} is a budgetvit cache, not an image tree: "
                       f"train on it with --set data.dataset=cache"}[kind]


def test_the_cache_and_tree_readers_say_which_they_were_given(tmp_path):
    """What eval --data-path, bench-data and prepare --src meet (train is refused before)."""
    from budgetvit.data import cache
    from budgetvit.data.tree import scan
    tree, made = tmp_path / "tree", tmp_path / "cache"
    (tree / "train").mkdir(parents=True)
    made.mkdir()
    (made / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as e:
        cache.read_meta(tree)
    assert str(e.value) == (f"{tree} is an image tree (train/), not a budgetvit cache; make a "
                            f"cache of it with: budgetvit prepare --src {tree} --dst "
                            f"ANOTHER_FOLDER")
    with pytest.raises(FileNotFoundError) as e:
        scan(made, "val")
    assert str(e.value) == f"no val/ folder in {made}: it is a budgetvit cache, not an image tree"


def test_a_tree_without_val_is_shown_the_holdout(tmp_path, capsys, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "train").mkdir(parents=True)
    assert run_cli(["train", "--budget", "5s", "--out", str(tmp_path / "run"), "--set",
                    "data.dataset=imagefolder", f"data.path={tree}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: data.path: no val/ folder in {tree} (expected {tree}/val/<class>/<image>); "
        f"to evaluate on held-out training images instead: --set data.holdout=0.1")
    # Its train/ folder given for the tree (relative, as the error then names it: absolute)
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", "--budget", "5s", "--out", "run", "--set",
                    "data.dataset=imagefolder", "data.path=tree/train"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: data.path: no train/ folder in {tree}/train (expected {tree}/train/train/"
        f"<class>/<image>); give the folder that holds it, {tree}")


@pytest.mark.parametrize("dst", [".", "train/cache", "val/x/cache"])
def test_prepare_refuses_a_cache_in_its_tree_or_a_split(dst, tmp_path, capsys):
    """At the tree's root its meta.json would make the tree a cache; in a split, a class. (A
    folder beside the splits, /data/imagenet/cache, is outside the images: allowed.)"""
    tree = tmp_path / "tree"
    (tree / "train").mkdir(parents=True)
    assert run_cli(["prepare", "--src", str(tree), "--dst", str(tree / dst)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --dst {tree / dst} is the image tree --src {tree} or one of its splits: the "
        f"cache's files would go among its images; choose a folder outside them")
    assert os.listdir(tree) == ["train"] and os.listdir(tree / "train") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", [["speed"], ["eval", "--checkpoint", "x"],
                                     ["bench-data", "--src", "x"]])
def test_device_cuda_without_a_gpu_names_the_option(command, capsys):
    assert run_cli([*command, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device cuda but no CUDA GPU is visible"


def run_cli(args) -> int:
    """Exit code of `budgetvit ARGS` (argparse errors exit through SystemExit)."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def test_crafted_pickle_is_refused_and_never_runs(bad_files):
    from budgetvit.checkpoint import CheckpointError, load
    if os.path.exists("/tmp/budgetvit-pwned"):
        os.remove("/tmp/budgetvit-pwned")
    with pytest.raises(CheckpointError, match="refusing to load .*would run code"):
        load(bad_files["CRAFTED"])
    assert not os.path.exists("/tmp/budgetvit-pwned")


def test_config_values_are_parsed_never_evaluated():
    cfg = Config()
    with pytest.raises(ConfigError, match="expected float"):
        apply_overrides(cfg, ["optim.lr=__import__('os').getcwd()"])
    apply_overrides(cfg, ["data.path=__import__('os')"])
    assert cfg.data.path == "__import__('os')"  # just a string


def test_config_roundtrips_through_dict():
    cfg = Config()
    apply_overrides(cfg, ["optim.lr=3e-3", "model.dim=48", "train.ema=false"])
    again = from_dict(cfg.to_dict())
    assert again == cfg
    validate(again)
    saved = cfg.to_dict()
    saved["train"]["gone"] = 1  # a key a later version removed
    with pytest.raises(ConfigError, match=re.escape(
            "unknown config key 'train.gone' in a saved config (written by another version")):
        from_dict(saved)


def test_imagenet_presets_are_shown_without_their_data(capsys):
    """--print-config and bench --list only show: no data.path needed (training needs one)."""
    assert main(["train", "--preset", "imagenet-1gpu-24h", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "vit_s16_local"
    assert main(["bench", "--benchmark", "imagenet1k-1gpu-24h", "--list"]) == 0
    assert capsys.readouterr().out.startswith("vit ")
    assert run_cli(["train", "--preset", "imagenet-1gpu-24h", "--budget", "1s"]) == 2
    assert "data.dataset=imagefolder needs a root" in capsys.readouterr().err


def test_commands_other_than_train_are_refused_under_torchrun(monkeypatch, capsys):
    """Every rank would do the whole job (eval twice, prepare writing one cache from two
    processes): refused, said once (by rank 0), before anything is read."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    waits = []  # (rank 1 waits for torchrun to stop it, lest it stop rank 0 before it speaks)
    monkeypatch.setattr(cli.time, "sleep", waits.append)
    for rank, said in (("0", "error: budgetvit eval runs in one process: run it without "
                             "torchrun (train alone runs under torchrun)\n"), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        assert main(["eval", "--checkpoint", "/nonexistent"]) == 2
        assert capsys.readouterr().err == said
    assert waits == [cli.RANK_0_GRACE_S]


def test_an_option_without_its_value_gets_no_hint_to_take_the_next_option(capsys):
    assert run_cli(["train", "--budget", "--out", "x"]) == 2
    assert capsys.readouterr().err == ("error: budgetvit train: argument --budget: expected one "
                                       "argument\n")


def test_under_torchrun_a_fault_of_the_command_alone_is_said_by_rank_0_alone(monkeypatch,
                                                                           capsys, tmp_path):
    """Every rank finds the same bad value or argument; a missing path may be one node's own."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    waits = []
    monkeypatch.setattr(cli.time, "sleep", waits.append)
    cases = [(["train", "--budget", "-5s"], "'-5s' reads as an option"),
             (["train", "--set", "optim.lr=0"], "optim.lr=0.0 must be > 0"),
             (["train", "--preset", "nope"], "unknown preset 'nope'"),
             (["train", "--set", "data.dataset=imagefolder", f"data.path={tmp_path / 'no'}"],
              "data.path")]
    for args, fragment in cases:
        for rank in "01":
            monkeypatch.setenv("RANK", rank)
            assert run_cli(args) == 2
            err = capsys.readouterr().err
            said = rank == "0" or fragment == "data.path"
            assert (fragment in err) == said and (err == "") != said, (args, rank, err)
            assert waits == ([] if said else [cli.RANK_0_GRACE_S])
            waits.clear()
    monkeypatch.delenv("WORLD_SIZE")  # RANK=1 alone: no torchrun job, the process says it
    assert run_cli(["train", "--set", "optim.lr=0"]) == 2
    assert "optim.lr=0.0 must be > 0" in capsys.readouterr().err and waits == []


def test_a_batch_the_processes_cannot_share_says_both_ways_out(tmp_path, monkeypatch):
    from budgetvit import distributed
    from budgetvit.train import Trainer
    monkeypatch.setattr(distributed, "init", lambda kind: distributed.Dist(0, 2, 0))
    cfg = Config()
    apply_overrides(cfg, ["train.batch_size=127", "train.device=cpu"])
    with pytest.raises(SameOnEveryRank, match=r"^train.batch_size=127 is not divisible by the "
                                              r"world size 2: give a multiple of 2, or as many "
                                              r"processes as divide 127 \(a run resumes with its "
                                              r"own batch size\)$"):
        Trainer(cfg, tmp_path)
