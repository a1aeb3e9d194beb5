"""What a resume does with a config that changed since the checkpoint: new optimizer settings
and precision apply; the curriculum is kept (its plan, its final size; the paper rule read again
for a new budget); a change that would move the data position is refused; values that are no
usable number are one line."""
import math
import re

import pytest
import torch

from budgetvit import checkpoint
from budgetvit.cli import main
from budgetvit.config import SameOnEveryRank
from budgetvit.train import Trainer, train

from .conftest import crash_at_step, needs_fmnist, quick, records

pytestmark = needs_fmnist


def test_resume_applies_the_new_weight_decay_and_betas(tmp_path, capsys):
    """The optimizer state loaded from a checkpoint carries that run's weight decay and betas in
    its param groups; a resume with other values must train with the new ones (the exempt group
    keeps weight decay 0), also in the checkpoints it writes from then on."""
    out = tmp_path / "run"
    train(quick("train.budget=3steps"), out)
    saved = checkpoint.load_latest(out)["optimizer"]["param_groups"]
    assert [(g["weight_decay"], tuple(g["betas"])) for g in saved] == [(0.05, (0.9, 0.999)),
                                                                        (0.0, (0.9, 0.999))]
    capsys.readouterr()

    trainer = Trainer(quick("train.budget=5steps", "optim.weight_decay=0.2", "optim.beta1=0.8"),
                      out)
    summary = trainer.run()
    assert summary["steps"] == 5
    said = capsys.readouterr().out
    assert ("warning: resuming with a config that differs from the checkpoint's in "
            "optim.weight_decay, optim.beta1, train.budget; the new values apply from here on"
            in said)
    decay, exempt = trainer.opt.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "blocks.0.norm1.weight"} <= {names[id(p)] for p in exempt["params"]}
    assert decay["weight_decay"] == 0.2 and exempt["weight_decay"] == 0.0
    assert decay["betas"] == exempt["betas"] == (0.8, 0.999)
    written = checkpoint.load_latest(out)
    assert written["clock"]["steps"] == 5
    assert [(g["weight_decay"], tuple(g["betas"])) for g in written["optimizer"]["param_groups"]] \
        == [(0.2, (0.8, 0.999)), (0.0, (0.8, 0.999))]


def test_resume_with_another_curriculum_keeps_the_plan_and_says_so(tmp_path, capsys):
    """The size plan is made once: a resume with other curriculum.stages warns that the run
    keeps the curriculum it started with, and trains by the checkpoint's plan (16 px to half the
    budget, then 28 px), not the new one (20 px for three quarters)."""
    args = ("train.budget=12steps", "checkpoint.every_steps=4")
    crash_at_step(quick(*args), tmp_path, 6)
    state = checkpoint.load_latest(tmp_path)
    assert state["clock"]["steps"] == 4  # resumed inside the 16 px stage
    plan = state["plan"]
    assert plan == [{"size": 16, "start": 0.0, "end": 0.5}, {"size": 28, "start": 0.5, "end": 1.0}]
    capsys.readouterr()

    summary = train(quick(*args, "curriculum.stages=20:0.75,28:0.25"), tmp_path)
    said = capsys.readouterr().out
    assert ("warning: curriculum.stages changed, but a run keeps the curriculum it started "
            "with; to train another, use another --out") in said
    assert "resuming with a config that differs" not in said  # nothing else changed
    assert "curriculum: 16px@0% -> 28px@50%;" in said
    assert summary["steps"] == 12 and summary["plan"] == plan
    assert [(st["img_size"], st["images"]) for st in summary["stages"]] == [(16, 6 * 64),
                                                                           (28, 6 * 64)]
    assert {r["img_size"] for r in records(tmp_path / "log.jsonl") if r["step"] <= 6} == {16}


def test_resume_with_another_final_size_evaluates_at_the_run_s(tmp_path, capsys):
    """The warning says the run keeps its curriculum: its evaluations and summary are at the
    final size it trains to (28 px), not at the new config's 16 px."""
    args = ("train.budget=6steps", "checkpoint.every_steps=2")
    crash_at_step(quick(*args), tmp_path, 3)
    summary = train(quick(*args, "curriculum.final_size_px=16",
                          "curriculum.stages=16:1"), tmp_path)
    assert "but a run keeps the curriculum it started with" in capsys.readouterr().out
    assert summary["final_img_size"] == 28 and summary["config"]["curriculum"]["stages"] != \
        "16:1"
    assert {e["img_size"] for e in records(tmp_path / "eval.jsonl")} == {28}


def test_a_larger_budget_reads_the_paper_rule_again(tmp_path):
    """The paper rule gives each size N epochs: a 20-step run (16, 20, 24 px for 3.75 steps
    each, then 28 px) given 40 steps trains on as a 40-step run does (at 28 px from step 13),
    not at the 20-step plan's shares of 40 steps (back to 24 px after step 20)."""
    args = ("curriculum.mode=paper", "curriculum.start_size_px=16", "curriculum.step_px=4",
            "curriculum.every_epochs=0.004", "train.log_every=1", "train.ema=false")
    train(quick("train.budget=20steps", *args), tmp_path / "grown")
    grown = train(quick("train.budget=40steps", *args), tmp_path / "grown")
    straight = train(quick("train.budget=40steps", *args), tmp_path / "straight")
    assert grown["plan"] == straight["plan"]
    sizes = [r["img_size"] for r in records(tmp_path / "grown" / "log.jsonl")]
    assert sizes == [r["img_size"] for r in records(tmp_path / "straight" / "log.jsonl")]
    assert sizes == sorted(sizes) and sizes.count(28) == 40 - 12  # 3.75 steps at each other


@pytest.mark.parametrize("change, reason", [
    ("train.batch_size=32", "train.batch_size 64 -> 32"),
    ("data.holdout=0.1", "data.holdout 0.0 -> 0.1, 2000 -> 1800 training images"),
    ("data.synthetic_images=1000", "2000 -> 1000 training images"),
    ("train.seed=7", "train.seed 0 -> 7")])
def test_resume_that_would_move_the_data_position_is_refused(tmp_path, capsys, change, reason):
    """The checkpoint's place in the data (epoch, batch) counts batches of its batch size in
    its training images in the seed's order: another batch size, image count, holdout or seed
    would resume elsewhere
    (or train on held-out images), so it is one line and exit 2, not a traceback or a quietly
    wrong run."""
    def run(budget, *changes):
        return main(["train", "--budget", budget, "--out", str(tmp_path), "--set",
                     "data.dataset=synthetic", "data.synthetic_images=2000",
                     "train.batch_size=64", "curriculum.mode=off", "model.name=vit_micro4",
                     "train.eval_batch_size=256", *changes])
    assert run("3steps") == 0
    capsys.readouterr()
    assert run("5steps", change) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out {tmp_path} holds a run this config cannot go on from "
                   f"({reason}): its place in the data would point elsewhere, or the run would "
                   f"train on images it held out; use another --out, or that run's values")


def test_fp32_run_resumes_in_fp16_on_cpu(tmp_path, capsys):
    """An fp32 run's checkpoint holds an empty loss-scaler state; resuming it with
    train.precision=fp16 (GradScaler enabled; CPU autocast runs float16 in this torch) must
    start a fresh scaler instead of failing to load the empty one, then train and save it."""
    out = tmp_path / "run"
    train(quick("train.budget=2steps", "curriculum.stages=16:1", "curriculum.final_size_px=16"),
          out)
    assert checkpoint.load_latest(out)["scaler"] == {}
    trainer = Trainer(quick("train.budget=3steps", "curriculum.stages=16:1",
                            "curriculum.final_size_px=16", "train.precision=fp16"), out)
    assert trainer.scaler.is_enabled() and trainer.rt.amp_dtype == torch.float16
    summary = trainer.run()
    assert summary["steps"] == 3 and math.isfinite(summary["top1"])
    assert "resuming" in capsys.readouterr().out
    scaler = checkpoint.load_latest(out)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler


@pytest.mark.parametrize("setting,message", [
    ("optim.warmup=nan", "optim.warmup: expected a finite number, got 'nan'"),
    ("optim.lr=inf", "optim.lr: expected a finite number, got 'inf'"),
    ("optim.weight_decay=-inf", "optim.weight_decay: expected a finite number, got '-inf'"),
    ("curriculum.stages=0:0.5,28:0.5", "curriculum.stages size=0 must be >= 1"),
    ("model.mlp_ratio=0.01",  # the fmnist preset's model is 96 wide: int(0.96) = 0 units
     "model.mlp_ratio=0.01 leaves the FFN of model.dim=96 no hidden unit"),
])
def test_values_that_are_no_usable_number_give_one_line(setting, message, capsys):
    """nan passes every range check (each comparison is False), inf overflows the schedules, a
    0 px stage is a multiple of every patch size, and a tiny mlp_ratio leaves a 0-wide FFN: each
    is refused by validation, in one line on stderr with exit code 2, before anything runs."""
    assert main(["train", "--print-config", "--set", setting]) == 2
    said = capsys.readouterr()
    assert said.err == f"error: {message}\n"
    assert said.out == ""  # the config was not printed


def test_a_paper_plan_resumed_at_another_world_size_goes_on_at_the_new_rates(tmp_path, capsys,
                                                                            monkeypatch):
    """The paper rule's plan converts epochs to seconds at the rates measured at the start; on
    another number of processes those rates no longer hold. The resumed run times the size being
    trained and the later ones again, and its plan goes on at the new rates: the finished size
    keeps its stage, the current one its elapsed time plus what is left of its epochs (counted
    from the images it trained) at the new rate. The checkpoint is made to say it was written by
    2 processes, at rates that put 1 s of training inside the 20 px stage [0.75 s, 2.25 s) with
    a quarter of its epochs done; the new rates are set where the warm-up measures them."""
    from budgetvit.warmup import WarmUp
    every = 0.01
    args = ("curriculum.mode=paper", f"curriculum.every_epochs={every}", "train.ema=false")
    first = train(quick("train.budget=1s", *args), tmp_path)
    images = first["images_seen"] / first["epochs"]  # (the training split)
    path = checkpoint.list_checkpoints(tmp_path)[-1]
    state = checkpoint.load(path)
    now = state["clock"]["train_s"]
    assert 0.75 < now < 2.25
    done = round(every * images / 4)
    state["world_size"], state["world_sizes"] = 2, [4, 2]
    state["seconds_per_epoch"] = {"16": 75.0, "20": 150.0, "24": 150.0, "28": 150.0}
    state["stages"] = [
        {"img_size": 16, "start_s": 0.0, "end_s": 0.75, "images": round(every * images)},
        {"img_size": 20, "start_s": 0.75, "end_s": now, "images": done}]
    checkpoint.save(state, tmp_path, checkpoint.step_of(path), keep=3)
    new, timed = {20: 50.0, 24: 60.0, 28: 70.0}, []
    real_warm_up = WarmUp.warm_up

    def warm_up(self, sizes, measure):
        real_warm_up(self, sizes, measure)
        if measure:
            timed.append(sizes)
            self.seconds_per_epoch = {size: new[size] for size in sizes}
    monkeypatch.setattr(WarmUp, "warm_up", warm_up)
    # The plan as the resume made it: the rates are made up, and as trained, each size would
    # end on its epochs (test_paper_rule.py).
    monkeypatch.setattr(WarmUp, "keep_to_epochs", lambda self, now: None)
    capsys.readouterr()

    summary = train(quick("train.budget=2.5s", *args), tmp_path)
    assert ("note: resumed at world size 1 (was 2): the sizes from 20px on were timed again and "
            "the size plan goes on at these rates") in capsys.readouterr().out
    assert timed == [[20, 24, 28]]
    assert summary["world_sizes"] == [4, 2, 1] and summary["world_size"] == 1
    end_20 = now + (every - done / images) * new[20]  # its epochs left at the new rate
    plan = [(st["size"], st["start"], st["end"]) for st in summary["plan"]]
    end_24 = end_20 + every * new[24]
    assert plan == [(16, 0.0, pytest.approx(0.75 / 2.5)),
                    (20, pytest.approx(0.75 / 2.5), pytest.approx(end_20 / 2.5)),
                    (24, pytest.approx(end_20 / 2.5), pytest.approx(end_24 / 2.5)),
                    (28, pytest.approx(end_24 / 2.5), 1.0)]
    rates = checkpoint.load_latest(tmp_path)["seconds_per_epoch"]
    # At the final size, which lasts to the end at any rate, nothing is timed again.
    path = checkpoint.list_checkpoints(tmp_path)[-1]
    state = checkpoint.load(path)
    state["world_size"] = 2
    checkpoint.save(state, tmp_path, checkpoint.step_of(path), keep=3)
    train(quick("train.budget=3s", *args), tmp_path)
    assert "note: resumed at world size" not in capsys.readouterr().out
    assert timed == [[20, 24, 28]] and checkpoint.load_latest(tmp_path)["seconds_per_epoch"] \
        == rates


def test_a_budget_the_unfinished_run_has_spent_is_refused(tmp_path):
    """Stopped at step 12 of 20, resumed with 8 steps (or 12): it would stop at once, its
    learning rate not annealed. A larger budget goes on; so does a run that had finished
    its own budget and lacks only its summary (a kill before summary.json)."""
    args = ("checkpoint.every_steps=4", "curriculum.mode=off", "train.ema=false")
    crash_at_step(quick("train.budget=20steps", *args), tmp_path, 13)
    for smaller in ("8steps", "12steps"):
        with pytest.raises(SameOnEveryRank, match=rf"^budget {smaller} is spent already: this "
                           r"run has trained 12 steps of its 20steps, and would stop at once, "
                           r"its learning rate not annealed; give a larger budget, or another "
                           r"--out for a new run$"):
            train(quick(f"train.budget={smaller}", *args), tmp_path)
    assert train(quick("train.budget=16steps", *args), tmp_path)["steps"] == 16
    (tmp_path / "summary.json").unlink()
    assert train(quick("train.budget=12steps", *args), tmp_path)["steps"] == 16


def test_a_new_budget_says_where_it_puts_the_schedules(tmp_path, capsys):
    """A finished 4-step run given 16 steps goes on at 25% of the new budget: back in the
    first stage (16 px) of its 16:0.5,28:0.5 curriculum, which it says."""
    train(quick("train.budget=4steps"), tmp_path)
    capsys.readouterr()
    summary = train(quick("train.budget=16steps"), tmp_path)
    assert ("note: the schedules (size, learning rate) go on at 25% of the new budget (at 100% "
            "of the old one): 28px -> 16px") in capsys.readouterr().out
    assert [st["img_size"] for st in summary["stages"]] == [16, 28, 16, 28]


def test_a_budget_in_the_other_unit_plans_the_paper_rule_again(tmp_path, capsys):
    """Stopped at step 6 of a time budget, resumed with 30 steps: the paper rule is planned
    for the step budget (0.004 epochs of the 59,700 training images, in batches of 64, convert
    exactly; it kept the time budget's shares), and the note says where that puts the run. A
    step budget's run without warm-up has no rates to plan a time budget: resumed with one, it
    keeps its plan."""
    args = ("curriculum.mode=paper", "curriculum.start_size_px=16", "curriculum.step_px=4",
            "curriculum.every_epochs=0.004", "train.ema=false", "checkpoint.every_steps=3")
    crash_at_step(quick("train.budget=60s", *args), tmp_path / "seconds", 7)
    capsys.readouterr()
    summary = train(quick("train.budget=30steps", *args), tmp_path / "seconds")
    out = capsys.readouterr().out
    assert re.search(r"note: the schedules \(size, learning rate\) go on at 20% of the new "
                     r"budget \(at \d+% of the old one\): \d+px -> 20px\n", out)
    assert "(at 28px on holdout (0.005 of train, 300 images))\n" in out  # (its count once)
    share = 0.004 * (59_700 // 64) / 30  # (an epoch: 932 whole batches)
    assert summary["plan"] == [
        {"size": size, "start": pytest.approx(i * share), "end": pytest.approx((i + 1) * share)}
        for i, size in enumerate([16, 20, 24])] + [
        {"size": 28, "start": pytest.approx(3 * share), "end": 1.0}]
    crash_at_step(quick("train.budget=8steps", "train.warmup_steps=0", *args),
                  tmp_path / "steps", 4)
    plan = checkpoint.load_latest(tmp_path / "steps")["plan"]
    assert train(quick("train.budget=1s", *args), tmp_path / "steps")["plan"] == plan
