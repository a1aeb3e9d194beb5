"""CPU-side checks of the speed work: MFU arithmetic, the peak-rate table, warm-up that
leaves no trace, and the speed command itself."""
import argparse
import copy
import re
import time

import pytest
import torch
from torch._dynamo.utils import counters

from budgetvit import checkpoint, speed
from budgetvit.cli import main
from budgetvit.config import ConfigError, model_shape
from budgetvit.models import create_model, forward_flops, train_flops
from budgetvit.runtime import Runtime, mfu, peak_flops, peak_for_name
from budgetvit.train import Trainer

from .conftest import crash_at_step, needs_fmnist, quick, records, tiny_config


def test_mfu_arithmetic():
    cfg = create_model("vit_s16_local").cfg
    # 3000 img/s of ViT-S/16-local at 224 px on a 989 TFLOP/s GPU: ~9.2 GFLOPs forward, x3
    # for training less the patch embedding's input gradient (2 x 196 x 768 x 384)
    expected = (3 * forward_flops(cfg, 224) - 2 * 196 * 768 * 384) * 3000 / 989e12
    assert mfu(cfg, 224, 3000.0, 989e12) == pytest.approx(expected)
    assert 0.083 < expected < 0.085


@needs_fmnist
def test_training_log_mfu_counts_each_step_at_its_own_size(tmp_path, monkeypatch):
    """One log window over both sizes (16 px for 5 steps, then 28 px): its MFU adds each
    step's FLOPs at the size it ran at, not the window's last size for all of its images."""
    monkeypatch.setenv("BUDGETVIT_PEAK_TFLOPS", "0.5")
    trainer = Trainer(quick("train.budget=10steps", "train.log_every=10"), tmp_path)
    s = trainer.run()
    [rec] = records(tmp_path / "log.jsonl")
    assert [st["img_size"] for st in s["stages"]] == [16, 28] and rec["images"] == 640
    flops = sum(st["images"] * train_flops(trainer.model_cfg, st["img_size"])
                for st in s["stages"])
    seconds = rec["images"] / rec["img_per_s"]  # (the window opened at 0 s)
    assert rec["mfu"] == pytest.approx(flops / seconds / 0.5e12, rel=1e-9)
    at_last_size = train_flops(trainer.model_cfg, 28) * rec["img_per_s"] / 0.5e12
    assert rec["mfu"] < 0.9 * at_last_size

    # A checkpoint from before windows counted FLOPs: its window is counted at its last size.
    state = trainer.state_dict()
    state["log_window"] = {"loss": 1.0, "n": 3, "images": 192, "t": 1.0, "step": 10}
    trainer.load_state_dict(state)
    assert trainer.window["flops"] == 192 * train_flops(trainer.model_cfg, 28)


def test_speed_counts_a_models_resident_memory():
    """The mem column adds what one model holds between steps (weights, 2 AdamW moments and a
    step counter per tensor, the batch) to its step's transient peak, so that timm's model,
    resident beside ours, is not counted."""
    model = create_model("vit_micro4", num_classes=10, in_chans=1)
    rt = Runtime(torch.device("cpu"), None, compile=False)
    timer = speed.StepTimer(model, in_chans=1, size=16, batch=8, rt=rt, compile_model=False)
    params = list(model.parameters())
    weights = sum(p.numel() for p in params) * 4
    batch = 8 * 16 * 16 * 4 + 8 * 8  # float32 images, int64 labels
    assert timer.resident_bytes() == weights + batch
    timer.step()  # AdamW creates its state at the first step
    assert timer.resident_bytes() == 3 * weights + 4 * len(params) + batch


def test_peak_table_and_override(monkeypatch):
    assert peak_for_name("NVIDIA H200") == 989e12
    assert peak_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_for_name("NVIDIA L40S") == 362e12 and peak_for_name("NVIDIA L4") == 121e12
    assert peak_for_name("NVIDIA L40") == 181e12  # not the L4's figure
    assert peak_for_name("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert peak_for_name("NVIDIA H100 PCIe") == 756e12
    assert peak_for_name("NVIDIA A10G") == 70e12
    assert peak_for_name("Some Future GPU") is None
    assert peak_for_name("NVIDIA H200 MIG 1g.18gb") is None  # (a seventh of the GPU)
    monkeypatch.delenv("BUDGETVIT_PEAK_TFLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setenv("BUDGETVIT_PEAK_TFLOPS", "123.5")
    assert peak_flops(torch.device("cpu")) == pytest.approx(123.5e12)
    for bad in ("abc", "0", "-5", "nan", "inf"):
        monkeypatch.setenv("BUDGETVIT_PEAK_TFLOPS", bad)
        with pytest.raises(ConfigError, match=f"BUDGETVIT_PEAK_TFLOPS={bad}: give the GPU's"):
            peak_flops(torch.device("cpu"))


def test_a_bad_peak_rate_stops_a_run_before_it_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BUDGETVIT_PEAK_TFLOPS", "abc")
    assert main(["train", "--budget", "2steps", "--out", str(tmp_path / "run")]) == 2
    assert "BUDGETVIT_PEAK_TFLOPS=abc" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_tf32_is_for_autocast_runs_only(monkeypatch):
    """The float32 matmul precision is the process's: each CUDA run sets it for itself."""
    from budgetvit.config import TrainSection
    from budgetvit.runtime import resolve
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.get_float32_matmul_precision()
    try:
        for precision, wanted in (("bf16", "high"), ("fp32", "highest"), ("fp16", "high")):
            resolve(TrainSection(device="cuda", precision=precision))
            assert torch.get_float32_matmul_precision() == wanted, precision
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_cpu_device_is_described_with_its_thread_count(monkeypatch):
    from budgetvit.config import TrainSection
    from budgetvit.runtime import resolve
    rt = resolve(TrainSection(device="cpu"))
    for threads, said in ((1, "1 thread)"), (2, "2 threads)")):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        assert rt.describe().startswith("cpu (") and rt.describe().endswith(f", {said}")


@needs_fmnist
def test_a_slow_eager_warm_up_says_where_it_is(tmp_path, monkeypatch, capsys):
    """Compiled sizes are said as each is done; so are eager ones that took a while (here: any,
    the threshold set to 0), before the header."""
    from budgetvit.warmup import WarmUp
    monkeypatch.setattr(WarmUp, "say_after_s", 0.0)
    Trainer(quick("train.budget=2steps"), tmp_path).run()
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(r"in \S+s", "in Ts", line) for line in lines[:2]] == [
        "warm-up 16px: ran 2 steps in Ts (not charged)",
        "warm-up 28px: ran 2 steps in Ts (not charged)"]
    assert lines[2].startswith("training ")


@needs_fmnist
def test_warm_up_measures_every_size_and_restores_the_initial_state(tmp_path):
    trainer = Trainer(tiny_config("train.warmup_steps=2", "model.drop_path=0.1",
                                  "aug.mixup=0.2"), tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    rng_before = torch.get_rng_state()
    trainer.warm_up([16, 28], measure=True)
    assert set(trainer.seconds_per_epoch) == {16, 28}
    assert all(v > 0 for v in trainer.seconds_per_epoch.values())
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v)
               for k, v in trainer.ema.module.state_dict().items())
    assert trainer.opt.state_dict()["state"] == {}  # no Adam moments from warm-up steps
    assert trainer.ema.updates.item() == 0
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert trainer.data.state_dict() == {"epoch": 0, "batch": 0, "bad_images": 0,
                                         "num_images": 60000}
    assert trainer.clock.train_s == 0.0 and trainer.clock.other_s["warmup"] > 0


def simulate_loader_workers(data, depth: int, period_s: float) -> dict:
    """Make a stream behave like loader workers that are slower than the model: after each
    (re)start the first batch and `depth` prefetched ones are ready at once, every later batch
    takes `period_s`. Returns a count of the batches that had to wait."""
    data.prefetch_batches = depth
    ready, waits = {"n": 0}, {"n": 0}
    real_next, real_load = data.next_batch, data.load_state_dict

    def next_batch():
        if ready["n"] == 0:
            waits["n"] += 1
            time.sleep(period_s)
        ready["n"] = max(ready["n"] - 1, 0)
        return real_next()

    def load_state_dict(state):
        ready["n"] = 1 + depth
        real_load(state)
    data.next_batch, data.load_state_dict = next_batch, load_state_dict
    return waits


@needs_fmnist
@pytest.mark.parametrize("mode", ["paper", "stages"])
def test_warm_up_times_the_data_rate_where_the_plan_depends_on_it(tmp_path, mode):
    """The paper's rule converts epochs to seconds with the warm-up's rates: there the
    prefetched batches are drained before timing, so a data-bound size is timed at its data
    rate. A plan of fixed shares needs no rates and pays no draining steps."""
    trainer = Trainer(tiny_config(f"curriculum.mode={mode}", "curriculum.start_size_px=16",
                                  "curriculum.step_px=12", "train.budget=60s",
                                  "train.warmup_steps=3"), tmp_path)
    period_s, per_epoch = 0.1, trainer.data.batches_per_epoch
    waits = simulate_loader_workers(trainer.data, depth=4, period_s=period_s)
    trainer.warm_up([16, 28], measure=True)
    if mode == "paper":  # every timed step waited on the data
        assert waits["n"] == 2 * 3
        assert min(trainer.seconds_per_epoch.values()) >= period_s * per_epoch
    else:  # 1 + 3 steps per size, all served from the 1 + 4 prefetched: none waited
        assert waits["n"] == 0
        assert set(trainer.seconds_per_epoch) == {16, 28}


@needs_fmnist
def test_speed_command_compares_timm_and_trainer_on_cpu(capsys):
    pytest.importorskip("timm")
    assert main(["speed", "--model", "vit_micro4", "--img-size", "16,28", "--batch-size", "16",
                 "--steps", "2", "--repeats", "1", "--compare-timm", "--trainer"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "timm img/s" in lines[1] and "trainer img/s" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == [16, 28]
    for r in rows:
        ours, timm_rate, ratio = float(r[1]), float(r[5]), float(r[6])
        assert ours > 0 and timm_rate > 0
        assert ratio == pytest.approx(ours / timm_rate, rel=0.01)  # printed rounded


def test_speed_says_when_compile_settings_do_not_apply(capsys):
    """On the CPU compile is off unless asked for: a --compile-mode given there changes
    nothing, and the output says so rather than print a table that seems to answer it."""
    args = ["speed", "--model", "vit_micro4", "--sizes", "16", "--batch-size", "4", "--steps",
            "1", "--repeats", "1", "--device", "cpu"]
    assert main(args + ["--compile-mode", "reduce-overhead"]) == 0
    header, note = capsys.readouterr().out.splitlines()[:2]
    assert "compile off" in header
    assert note.startswith("note: --compile-mode and --compile-scope apply with compile on")
    assert main(args) == 0
    assert "note:" not in capsys.readouterr().out


def test_speed_trainer_times_the_same_model_as_the_bare_loop():
    """The fmnist preset narrows the FFN; the trainer column must not inherit that."""
    args = argparse.Namespace(device="cpu", compile="off", compile_scope="blocks",
                              compile_mode="default", drop_path=0.0)
    for name in ("vit_micro4", "vit_micro4_local"):
        cfg = speed.trainer_config(name, 28, 16, 5, args)
        bare = create_model(name, num_classes=10, in_chans=1).cfg
        assert model_shape(cfg, num_classes=10, in_chans=1) == bare
        assert cfg.curriculum.mode == "off" and cfg.train.budget == "5steps"


def compile_with_eager_backend(monkeypatch) -> list[dict]:
    """torch.compile through Dynamo's "eager" backend (graphs captured, nothing generated, so
    fast); returns the list of the arguments each torch.compile call got."""
    calls = []
    real_compile = torch.compile

    def compile_eagerly(fn, **kwargs):
        calls.append(kwargs)
        return real_compile(fn, dynamic=kwargs["dynamic"], backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    counters.clear()
    return calls


def test_block_compile_serves_every_block_and_changes_no_number(monkeypatch):
    """Scope "blocks": one graph per size for all blocks, block 0 (drop-path rate 0) included
    (the rates are tensors), the same outputs and gradients as eager, and torch.compile called
    with the configured mode."""
    calls = compile_with_eager_backend(monkeypatch)
    model = create_model("vit_micro4_local", in_chans=1, num_classes=10, depth=5, drop_path=0.2)
    reference = copy.deepcopy(model)
    forward = Runtime(torch.device("cpu"), None, True, "blocks", "reduce-overhead").compiled(model, 2)
    for size in (16, 28):
        x = torch.randn(6, 1, size, size)
        outputs = []
        for m, f in ((model, forward), (reference, reference)):
            torch.manual_seed(size)
            out = f(x)
            out.square().mean().backward()
            outputs.append((out, [p.grad for p in m.parameters()]))
        (out, grads), (ref, ref_grads) = outputs
        assert torch.allclose(out, ref, atol=1e-6)
        assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, ref_grads))
    assert counters["stats"]["unique_graphs"] == 2  # one per size, for all 5 blocks
    assert calls == [{"dynamic": False, "mode": "reduce-overhead"}] * 5
    assert set(model.state_dict()) == set(reference.state_dict())  # checkpoints unchanged
    calls.clear()
    whole = Runtime(torch.device("cpu"), None, True, "model", "default").compiled(reference, 2)
    assert calls == [{"dynamic": False, "mode": None}] and whole is not reference


@needs_fmnist
def test_trainer_compiles_every_size_before_the_clock_and_never_after(tmp_path, monkeypatch,
                                                                     capsys):
    calls = compile_with_eager_backend(monkeypatch)
    trainer = Trainer(tiny_config("train.compile=on", "train.budget=12steps", "model.depth=3",
                                  "model.drop_path=0.1"), tmp_path)
    graphs = {}
    real_warm_up = trainer.warm_up

    def warm_up(*args, **kwargs):
        real_warm_up(*args, **kwargs)
        graphs["after warm-up"] = counters["stats"]["unique_graphs"]
    trainer.warm_up = warm_up
    summary = trainer.run()
    printed = capsys.readouterr().out
    assert "warm-up 16px: compiled and ran 2 steps in" in printed and "warm-up 28px" in printed
    assert len(calls) == 3 and summary["steps"] == 12
    # One graph (all 3 blocks) at each of 16 and 28 px, both before the clock; training at
    # both sizes and the final evaluation (eager) compile nothing more.
    assert graphs["after warm-up"] == 2 == counters["stats"]["unique_graphs"]
    assert [st["img_size"] for st in summary["stages"]] == [16, 28]


@needs_fmnist
def test_resumed_run_compiles_the_sizes_ahead_before_the_clock(tmp_path, monkeypatch):
    """A run resumed in the 28 px stage compiles 28 px (only) during an uncharged warm-up
    that leaves the resumed state as it was: nothing is compiled while the clock runs, and
    the weights end as in an uninterrupted run."""
    args = ("train.compile=on", "train.budget=12steps", "model.depth=3", "model.drop_path=0.1",
            "checkpoint.every_steps=4", "train.deterministic=true")
    compile_with_eager_backend(monkeypatch)
    straight = Trainer(tiny_config(*args), tmp_path / "straight")
    straight.run()
    crash_at_step(tiny_config(*args), tmp_path / "resumed", 9)
    clock = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "resumed")[-1])["clock"]
    torch._dynamo.reset()  # as in a new process
    counters.clear()
    resumed = Trainer(tiny_config(*args), tmp_path / "resumed")
    warmed, real_warm_up = {}, resumed.warm_up

    def warm_up(sizes, measure):
        real_warm_up(sizes, measure)
        warmed.update(sizes=sizes, measure=measure, graphs=counters["stats"]["unique_graphs"],
                      clock=(resumed.clock.steps, resumed.clock.train_s))
    resumed.warm_up = warm_up
    summary = resumed.run()
    # resumed at step 8 of 12, in the 28 px half: the blocks' one graph at 28 px, compiled
    # with the clock where the checkpoint left it
    assert clock["steps"] == 8
    assert warmed == {"sizes": [28], "measure": False, "graphs": 1,
                      "clock": (8, clock["train_s"])}
    assert counters["stats"]["unique_graphs"] == 1 and summary["steps"] == 12
    assert summary["warmup_time_s"] > clock["other_s"]["warmup"]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_fmnist
def test_cuda_graph_modes_keep_the_recording_call_out_of_the_timed_steps(tmp_path, monkeypatch,
                                                                       capsys):
    """torch.compile records CUDA graphs at a function's second call (the first runs eagerly):
    in those modes the warm-up runs two untimed steps per size before the timed ones, not one,
    or the paper rule's seconds per epoch would include the recording."""
    compile_with_eager_backend(monkeypatch)
    for mode, steps in (("default", 2), ("reduce-overhead", 3), ("max-autotune", 3)):
        Trainer(tiny_config("train.compile=on", f"train.compile_mode={mode}", "train.budget=1steps",
                            "curriculum.mode=off", "data.holdout=0.005"), tmp_path / mode).run()
        assert f"warm-up 28px: compiled and ran {steps} steps in" in capsys.readouterr().out, mode


@pytest.fixture
def compile_fails(monkeypatch):
    """torch.compile whose compiler fails at the first call, as Inductor does without a C
    compiler; the stance a fallback to eager sets is the process's, so it is reset after."""
    def no_compiler(gm, example_inputs):
        raise RuntimeError("no working C compiler here\nsecond line")
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(
        fn, dynamic=kwargs["dynamic"], backend=no_compiler))
    torch._dynamo.reset()
    yield
    torch.compiler.set_stance("default")
    torch._dynamo.reset()


@needs_fmnist
def test_a_failing_compile_goes_on_eager_under_auto_and_stops_under_on(tmp_path, capsys,
                                                                       compile_fails):
    args = ("train.budget=6steps", "train.deterministic=true", "model.drop_path=0.1",
            "data.holdout=0.005", "train.ema=false")
    eager = Trainer(tiny_config("train.compile=off", *args), tmp_path / "eager").run()
    with pytest.raises(ConfigError, match=r"^torch.compile failed: RuntimeError: no working C "
                                          r"compiler here \(train.compile=off trains without "
                                          r"it\)$"):
        Trainer(tiny_config("train.compile=on", *args), tmp_path / "on").run()
    # train.compile=auto, which compiles on a GPU alone: made to compile here by "on", then
    # read as "auto" when the compile fails
    trainer = Trainer(tiny_config("train.compile=on", *args), tmp_path / "auto")
    trainer.cfg.train.compile = "auto"
    capsys.readouterr()
    summary = trainer.run()
    out = capsys.readouterr().out
    assert ("note: torch.compile failed: RuntimeError: no working C compiler here; training "
            "eager, slower (fix the cause and resume to compile, or set train.compile=off not "
            "to try)") in out
    assert "fp32, eager" in out and "compiled" not in out
    assert summary["steps"] == 6 and summary["top1"] == eager["top1"]
    # With no timed warm-up steps it still compiles before the clock, and so falls back there
    torch.compiler.set_stance("default")
    trainer = Trainer(tiny_config("train.compile=on", "train.warmup_steps=0", *args),
                      tmp_path / "auto0")
    trainer.cfg.train.compile = "auto"
    assert trainer.run()["top1"] == eager["top1"]
    final = checkpoint.load_latest(tmp_path / "auto")["model"]
    assert all(torch.equal(final[k], v)
               for k, v in checkpoint.load_latest(tmp_path / "eager")["model"].items())


def test_speed_says_a_failing_compile_in_one_line(capsys, compile_fails):
    assert main(["speed", "--model", "vit_micro4", "--sizes", "16", "--batch-size", "4",
                 "--steps", "1", "--repeats", "1", "--device", "cpu", "--compile", "on"]) == 2
    assert capsys.readouterr().err == ("error: torch.compile failed at 16 px: RuntimeError: no "
                                       "working C compiler here (--compile off measures "
                                       "eager)\n")


def test_drop_path_reaches_both_models(monkeypatch, capsys):
    """--drop-path (the imagenet presets train with 0.1) is stochastic depth in ours and in
    timm's, rising to the rate at the last block in both."""
    models, real_init = [], speed.StepTimer.__init__

    def init(self, model, *args, **kwargs):
        models.append(model)
        real_init(self, model, *args, **kwargs)
    monkeypatch.setattr(speed.StepTimer, "__init__", init)
    assert main(["speed", "--model", "vit_micro4", "--sizes", "16", "--batch-size", "4",
                 "--steps", "1", "--repeats", "1", "--compare-timm", "--device", "cpu",
                 "--drop-path", "0.1"]) == 0
    assert "drop path 0.1" in capsys.readouterr().out.splitlines()[0]
    ours, theirs = models
    assert all(b.drops for b in ours.blocks) and ours.blocks[-1].drop_rate.item() == \
        pytest.approx(0.1)
    assert theirs.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
