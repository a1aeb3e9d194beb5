"""The trainer end to end on real Fashion-MNIST: summary contract, budget, curriculum,
schedules, exact resume, eval / predict / export on a saved checkpoint, ImageFolder trees."""
import errno
import json
import math
import re
import shutil

import pytest
import torch
from PIL import Image

from budgetvit import checkpoint, inference
from budgetvit.cli import main
from budgetvit.evaluate import normalize
from budgetvit.schedules import lr_at
from budgetvit.summary import print_summary
from budgetvit.train import Trainer, train

from .conftest import (FMNIST, crash_at_step, fmnist_images, needs_fmnist, tiny_config,
                       write_image_tree)

pytestmark = needs_fmnist

SUMMARY_KEYS = {"top1", "top5", "top1_ema", "budget_s", "train_time_s", "eval_time_s",
                "wall_time_s", "images_seen", "epochs", "final_img_size", "stages", "model",
                "params", "device", "world_size", "preset", "config", "code_version"}
LOG_KEYS = {"step", "train_time_s", "img_size", "lr", "loss", "img_per_s"}


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """A 6-second-budget run with a two-stage curriculum (16 px, then 28 px)."""
    out = tmp_path_factory.mktemp("timed")
    cfg = tiny_config("train.budget=6s", "train.eval_every_s=2")
    summary = train(cfg, out)
    return out, cfg, summary


def test_summary_names_the_code_the_run_started_from(tmp_path, monkeypatch):
    from budgetvit import train as train_module
    monkeypatch.setattr(train_module, "code_version", lambda: "abc123")
    trainer = Trainer(tiny_config("train.budget=2steps", "train.ema=false"), tmp_path)
    monkeypatch.setattr(train_module, "code_version", lambda: "abc123-dirty")  # edited meanwhile
    trainer.run()
    assert json.loads((tmp_path / "summary.json").read_text())["code_version"] == "abc123"


def test_summary_has_the_contract_fields(timed_run):
    out, cfg, summary = timed_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk)
    assert on_disk["budget_s"] == 6.0 and on_disk["world_size"] == 1
    assert on_disk["world_sizes"] == [1]
    assert on_disk["final_img_size"] == 28 and on_disk["preset"] == "fmnist"
    assert on_disk["eval_split"] == "test" and on_disk["evals"][-1]["eval_images"] == 10000
    assert on_disk["config"]["train"]["budget"] == "6s"
    assert 0 <= on_disk["top5"] <= 100 and on_disk["top1"] <= on_disk["top5"]
    assert on_disk["top1"] == on_disk["evals"][-1]["top1"]
    assert on_disk["images_seen"] == on_disk["steps"] * 64
    assert on_disk["epochs"] == pytest.approx(on_disk["images_seen"] / 60000)


def test_budget_is_respected_within_one_step(timed_run):
    out, _, s = timed_run
    assert s["train_time_s"] >= 6.0
    # The run stops at the first step that crosses the budget: the overrun is at most that
    # step (on CPU the clock is read after every step).
    assert 0 <= s["overrun_s"] <= max(0.01 * 6.0, s["last_step_s"])
    # Evaluation is not charged to the budget, so wall time exceeds training time.
    assert s["eval_time_s"] > 0 and s["wall_time_s"] > s["train_time_s"]


def test_stages_grow_and_lr_ends_at_floor(timed_run):
    out, cfg, s = timed_run
    sizes = [st["img_size"] for st in s["stages"]]
    assert sizes == [16, 28]
    assert s["stages"][0]["end_s"] <= s["stages"][1]["start_s"] + 1e-6
    assert s["plan"][1]["start"] == 0.5
    # The switch happens at the first step after half the budget (3 s), never before.
    assert 3.0 <= s["stages"][1]["start_s"] < 4.0
    assert sum(st["images"] for st in s["stages"]) == s["images_seen"]
    # The last step started within its own duration of the deadline, so its lr is at most
    # the schedule's value there (close to the floor on an idle machine, lr_at(1) = floor).
    o = cfg.optim
    last_start = 1.0 - s["last_step_s"] / 6.0
    assert o.min_lr <= s["final_lr"] <= lr_at(last_start, o.lr, o.min_lr, o.warmup) + 1e-12


def test_log_lines_and_eval_history(timed_run):
    out, _, s = timed_run
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs and all(LOG_KEYS <= set(r) for r in logs)
    assert [r["step"] for r in logs] == sorted(r["step"] for r in logs)
    assert {r["img_size"] for r in logs} == {16, 28}
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(evals) >= 3  # every 2 s of training, plus the final one
    assert all(e["eval_images"] == 10000 for e in evals)
    assert evals[-1]["top1"] == s["top1"]


def test_learns_fashion_mnist_within_a_step_budget(tmp_path, capsys):
    """Machine-independent learning check: 150 steps of a tiny ViT, far above chance (10%)."""
    summary = train(tiny_config("train.budget=150steps", "train.ema=false"), tmp_path)
    assert summary["top1"] > 30.0  # 52.0% with the 1x FFN of the fmnist preset (4x: 39.6%)
    assert "\nbudget 150steps, trained " in capsys.readouterr().out


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    """Deterministic step-budget runs: stop one at step 17 (after its step-10 checkpoint and
    step-16 log line, losing 7 steps, inside the 16 px stage), rerun the same command, and
    compare with an uninterrupted run: weights, optimizer, data position and the log."""
    args = ("train.budget=40steps", "checkpoint.every_steps=10", "train.deterministic=true",
            "model.drop_path=0.1", "aug.mixup=0.2", "aug.random_erasing=0.25", "train.log_every=4")
    train(tiny_config(*args), tmp_path / "straight")

    crash_at_step(tiny_config(*args), tmp_path / "resumed", 17)
    assert checkpoint.list_checkpoints(tmp_path / "resumed")[-1].name == "step_00000010.pt"

    summary = train(tiny_config(*args), tmp_path / "resumed")
    assert summary["steps"] == 40
    a = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "straight")[-1])
    b = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "resumed")[-1])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"] and a["stages"][0]["images"] == b["stages"][0]["images"]
    # The replayed steps 11-17 are logged once, and the step-12 line, whose window (steps 9-12)
    # spans the checkpoint, averages the same steps: the log reads as the uninterrupted run's,
    # field for field but for the timings.
    timings = ("img_per_s", "train_time_s")
    logs = [[{k: v for k, v in json.loads(line).items() if k not in timings}
             for line in (tmp_path / run / "log.jsonl").open()] for run in ("straight", "resumed")]
    assert [r["step"] for r in logs[0]] == list(range(4, 41, 4))
    assert {"loss", "lr", "img_size", "images", "epoch"} <= set(logs[0][0])
    assert logs[0] == logs[1]


def test_evaluations_are_not_repeated_on_resume_or_at_the_end(tmp_path):
    """An evaluation at every step: the checkpoint at step 5 holds step 5's evaluation, so the
    run resumed from it does not evaluate step 5 again, and the last step is evaluated once."""
    args = ("train.budget=12steps", "checkpoint.every_steps=5", "train.eval_every_s=1e-9",
            "data.holdout=0.005", "train.ema=false")
    train(tiny_config(*args), tmp_path / "straight")
    crash_at_step(tiny_config(*args), tmp_path / "resumed", 8)
    train(tiny_config(*args), tmp_path / "resumed")
    steps = [[json.loads(line)["step"] for line in (tmp_path / run / "eval.jsonl").open()]
             for run in ("straight", "resumed")]
    assert steps[0] == steps[1] and steps[0][-12:] == list(range(1, 13))
    assert len(set(steps[0])) == len(steps[0])


def test_each_rollback_lowers_the_lr_further(tmp_path, capsys):
    from budgetvit.train import TrainingStopped
    cfg = tiny_config("train.budget=30steps", "checkpoint.every_steps=5", "train.max_bad_steps=2",
                      "train.max_rollbacks=3", "data.holdout=0.02")
    trainer = Trainer(cfg, tmp_path)
    real_loss = trainer.loss_fn

    def loss_fn(logits, y):  # non-finite from step 3 on, however low the lr
        return real_loss(logits, y) * (math.nan if trainer.clock.steps + 1 >= 3 else 1.0)
    trainer.loss_fn = loss_fn
    with pytest.raises(TrainingStopped, match="after 3 rollbacks"):
        trainer.run()
    said = capsys.readouterr()
    # No checkpoint is written inside the run of bad steps: each rollback goes back to step 0.
    assert re.findall(r"rolled back to step (\d+) with lr x([\d.]+)", said.out + said.err) == [
        ("0", "0.5"), ("0", "0.25"), ("0", "0.125")]


def test_after_a_rollback_checkpoints_fall_due_from_the_step_rolled_back_to(tmp_path,
                                                                             monkeypatch):
    """The step-8 checkpoint cannot be written, steps 9-10 are non-finite: the run rolls back
    to step 4, and its next checkpoint is due 4 steps later, at step 8, not 4 steps after the
    failed write (step 12)."""
    cfg = tiny_config("train.budget=14steps", "checkpoint.every_steps=4",
                      "train.max_bad_steps=2", "data.holdout=0.02", "train.ema=false")
    trainer = Trainer(cfg, tmp_path)
    real_save, real_loss, saved = torch.save, trainer.loss_fn, []

    def save(obj, f, *a, **k):
        if obj["clock"]["steps"] == 8 and "failed 8" not in saved:  # (once)
            saved.append("failed 8")
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(obj["clock"]["steps"])
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    bad = {9, 10}

    def loss_fn(logits, y):  # steps 9 and 10 non-finite, the first time only
        step = trainer.clock.steps + 1
        scale = math.nan if step in bad else 1.0
        bad.discard(step)
        return real_loss(logits, y) * scale
    trainer.loss_fn = loss_fn
    summary = trainer.run()
    assert summary["faults"] == {"nonfinite_steps": 2, "rollbacks": 1, "checkpoint_failures": 1}
    # (14: before and after the final evaluation)
    assert saved == [0, 4, "failed 8", 8, 12, 14, 14]


def test_rerun_with_another_model_shape_is_refused_in_one_line(tmp_path, capsys):
    args = ["train", "--budget", "2steps", "--out", str(tmp_path), "--set", "model.dim=32",
            "model.depth=1", "model.heads=2", "train.batch_size=32", "data.holdout=0.02"]
    assert main(args) == 0
    capsys.readouterr()
    # With a new budget too, which a resume takes: only the key that blocks it is named.
    args[2] = "3steps"
    assert main(args + ["model.mlp_ratio=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--out {tmp_path} holds a run of vit_micro4_local on fashion_mnist" in err
    assert "(the model's shape differs; changed: model.mlp_ratio);" in err


def test_info_on_a_run_counts_the_model_it_trained_at_its_sizes(timed_run, capsys):
    out, _, s = timed_run
    assert main(["info", "--checkpoint", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    newest = checkpoint.list_checkpoints(out)[-1]
    assert lines[0] == (f"vit_micro4_local (checkpoint {newest} (step {s['steps']})): dim 32, "
                        f"depth 2, heads 2, patch 4, ffn local x1 (hswish), 10 classes, 1 channel")
    trained = sum(p.numel() for p in inference.load(out).model.parameters())
    assert lines[1].startswith(f"params: {trained:,}  ")
    assert [int(line.split()[0]) for line in lines[3:]] == [16, 28]


def test_eval_predict_and_export_on_a_checkpoint(timed_run, tmp_path, capsys):
    out, _, s = timed_run
    assert main(["eval", "--checkpoint", str(out), "--img-size", "28", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith(f"fashion_mnist {s['eval_split']}")
    rows = {int(line.split()[0]): line.split()[1:] for line in lines[2:]}
    assert set(rows) == {28, 16}
    assert float(rows[28][0]) == pytest.approx(s["top1"], abs=0.01)
    assert float(rows[28][2]) == pytest.approx(s["top1_ema"], abs=0.01)
    # The test files alone are enough (on a machine the run was not trained on).
    only_test = tmp_path / "fmnist-test"
    only_test.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FMNIST / name, only_test)
    assert main(["eval", "--checkpoint", str(out), "--img-size", "28", "16",
                 "--data-path", str(only_test)]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines

    images, labels = fmnist_images(3)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    assert main(["predict", "--checkpoint", str(out), *map(str, paths)]) == 0
    said = capsys.readouterr()
    newest = checkpoint.list_checkpoints(out)[-1]
    assert said.err == (f"predicting with checkpoint {newest} (ema weights of step "
                        f"{s['steps']}) at 28px\n")
    lines = said.out.strip().splitlines()
    assert len(lines) == 3
    # The EMA model's probabilities on the images as evaluation sees them: at 28 px the whole
    # 28 x 28 image (an ImageNet-style resize-and-centre-crop would cut its border off).
    ld = inference.load(out)
    with torch.no_grad():
        want = ld.ema(normalize(torch.from_numpy(images)[:, None], ld.mean, ld.std)).softmax(-1)
    for line, p in zip(lines, want):
        ranked = line.split(": ", 1)[1].split(", ")
        assert len(ranked) == 5
        top = p.topk(5)
        assert ranked == [f"{ld.classes[i]} {100 * q:.1f}%"
                          for q, i in zip(top.values.tolist(), top.indices.tolist())]

    # A photo stored on its side with an EXIF orientation that turns it upright (as a phone
    # takes it): predicted as viewers show it.
    sideways = Image.open(paths[0]).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    sideways.save(tmp_path / "sideways.png", exif=exif)
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "sideways.png")]) == 0
    assert capsys.readouterr().out.split(": ")[1] == lines[0].split(": ")[1] + "\n"

    predicted = lines
    weights = tmp_path / "w.safetensors"
    assert main(["export", "--checkpoint", str(out), "--out", str(weights)]) == 0
    assert capsys.readouterr().out.endswith(f"(ema weights of step {s['steps']})\n")
    from budgetvit.export import load_weights
    model = load_weights(weights)
    assert model.cfg.in_chans == 1 and model.cfg.num_classes == 10
    # The export alone is enough to predict and evaluate as the run did, with its EMA weights.
    assert main(["predict", "--checkpoint", str(weights), *map(str, paths)]) == 0
    assert capsys.readouterr().out.strip().splitlines() == predicted
    assert main(["eval", "--checkpoint", str(weights), "--img-size", "28"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"exported weights {weights} (ema weights of step {s['steps']})")
    assert lines[2].split() == ["28", rows[28][2], rows[28][3], "-", "-"]

    # A damaged newest checkpoint (in a copy of the run): named on stderr, the one before used.
    shutil.copytree(out, tmp_path / "copy")
    older, newest = checkpoint.list_checkpoints(tmp_path / "copy")[-2:]
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short
    capsys.readouterr()
    ld = inference.load(tmp_path / "copy")
    assert ld.path == older and ld.step == checkpoint.load(older)["clock"]["steps"]
    err = capsys.readouterr().err
    assert err.startswith(f"warning: cannot read checkpoint {newest}: ")
    assert err.endswith("; trying an older checkpoint\n") and err.count("\n") == 1


def test_imagefolder_tree_of_real_jpegs(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    cfg = tiny_config("data.dataset=imagefolder", f"data.path={root}", "data.num_workers=0",
                      "train.batch_size=12", "train.budget=6steps", "train.eval_batch_size=5",
                      "curriculum.stages=16:0.5,32:0.5", "curriculum.final_size_px=32")
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 6 and [st["img_size"] for st in summary["stages"]] == [16, 32]
    assert summary["evals"][-1]["eval_images"] == 12  # 3 classes x 4 val images
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "run")[-1])
    assert state["classes"] == ["bag", "coat", "sneaker"]  # sorted folder names
    assert state["model_config"]["in_chans"] == 3


@pytest.mark.parametrize("sync_every", [1, 4])
def test_nonfinite_steps_are_skipped_then_rolled_back_then_stop(tmp_path, sync_every, capsys):
    """sync_every=4 reads the fault flags back only every 4 steps, as on a GPU: the bad
    updates are still skipped on the device at their own step."""
    from budgetvit.train import TrainingStopped
    cfg = tiny_config("train.budget=30steps", "checkpoint.every_steps=5", "train.max_bad_steps=3",
                      "train.max_rollbacks=1", "train.deterministic=true",
                      f"train.sync_every={sync_every}")
    trainer = Trainer(cfg, tmp_path / "nan")
    real_loss = trainer.loss_fn
    bad_steps = {7, 12, 13, 14}  # one isolated NaN, then three in a row -> one rollback
    transient = set(bad_steps)

    def loss_fn(logits, y):
        loss = real_loss(logits, y)
        step = trainer.clock.steps + 1
        if step in bad_steps:
            if step in transient:  # after a rollback these steps are replayed cleanly
                bad_steps.discard(step)
            return loss * math.nan
        return loss
    trainer.loss_fn = loss_fn
    summary = trainer.run()
    assert summary["faults"]["nonfinite_steps"] == 4
    assert summary["faults"]["rollbacks"] == 1
    assert summary["steps"] == 30
    assert summary["images_seen"] == (30 - 1) * 64  # the isolated bad step trained nothing
    assert math.isfinite(summary["top1"])
    # The printed summary says what was handled (a clean run's says nothing).
    assert "\nhandled: non-finite steps (skipped) 4, rollbacks 1\n" in capsys.readouterr().out
    print_summary({**summary, "bad_images": 2, "faults": {}}, tmp_path)
    assert "\nhandled: unreadable training images (stood in) 2\n" in capsys.readouterr().out
    print_summary({**summary, "faults": {}}, tmp_path)
    assert "handled" not in capsys.readouterr().out

    # NaN at every step from step 3 on: rollback once, then stop with the step range.
    bad_steps.update(range(3, 100))
    transient.clear()
    trainer = Trainer(cfg, tmp_path / "nan2")
    trainer.loss_fn = loss_fn
    with pytest.raises(TrainingStopped, match=r"non-finite loss or gradient in steps \d+-\d+ "
                                              r"after 1 rollbacks"):
        trainer.run()
