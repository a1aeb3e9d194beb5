"""Checks that need a CUDA GPU (run by scripts/gpu_check.sh); skipped without one."""
import json
import math

import pytest
import torch

from budgetvit.cli import main
from budgetvit.train import Trainer, train

from .conftest import needs_fmnist, tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# The quickest and most telling checks first: scripts/gpu_check.sh may cut this file short.


# torch.compile needs a C compiler and Python's headers: scripts/gpu_check.sh deselects the
# tests marked `compile` where they are missing.
COMPILE_SETTINGS = ["off", pytest.param("on", marks=pytest.mark.compile)]


@pytest.fixture(autouse=True)
def compile_only_where_marked(request, monkeypatch):
    """A test that compiles (compile=auto does on a GPU) must say so with the mark."""
    if request.node.get_closest_marker("compile") is None:
        def unmarked(*args, **kwargs):
            raise AssertionError("this test runs torch.compile: mark it `compile`")
        monkeypatch.setattr(torch, "compile", unmarked)


@needs_fmnist
@pytest.mark.parametrize("compile_", COMPILE_SETTINGS)
def test_training_step_never_waits_for_the_gpu(tmp_path, compile_):
    """Between the trainer's sync points the host must never wait for the GPU: every
    synchronising CUDA call inside data -> step (augmentation, mixup, drop path, loss, clip,
    fused AdamW, EMA) is an error under torch.cuda.set_sync_debug_mode("error")."""
    trainer = Trainer(tiny_config("train.device=cuda", f"train.compile={compile_}",
                                  "curriculum.mode=off", "model.drop_path=0.1", "aug.mixup=0.2",
                                  "aug.random_erasing=0.25"), tmp_path)
    for _ in range(2):  # lazy initialisation (optimizer state, cuBLAS, compile) may sync
        trainer.step(*trainer.data.next_batch(), lr=1e-3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss, ok = trainer.step(*trainer.data.next_batch(), lr=1e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item() and ok.item()


def test_randaugment_never_waits_for_the_gpu():
    """RandAugment on the device (the cache loader's, every image its own 2 ops): no
    synchronising CUDA call, and the result agrees with the same draws on the CPU (not bit
    for bit: cuDNN's TF32 convolution may round sharpness differently)."""
    from budgetvit.data.augment import randaugment
    x = torch.randint(0, 256, (256, 3, 64, 64), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    u = torch.rand(256, 4, generator=torch.Generator().manual_seed(1))
    randaugment(x.cuda(), 2, 9, u)  # lazy initialisation (cuDNN) may sync
    on_gpu = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = randaugment(on_gpu, 2, 9, u)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    differs = (out.cpu() != randaugment(x, 2, 9, u)).float().mean().item()
    assert differs < 0.01, differs


def test_deterministic_kernels_are_refused_on_cuda(tmp_path):
    """The antialiased bicubic resampling of the position embedding has no deterministic CUDA
    backward: the option is refused in one line rather than failing at the first step."""
    from budgetvit.config import ConfigError
    with pytest.raises(ConfigError, match="train.deterministic=true is for CPU runs"):
        Trainer(tiny_config("train.device=cuda", "train.deterministic=true"), tmp_path)


@pytest.mark.parametrize("compile_", COMPILE_SETTINGS)
def test_speed_table_on_gpu(capsys, compile_):
    assert main(["speed", "--model", "vit_ti16_local", "--img-size", "64,224", "--compile",
                 compile_, "--batch-size", "64", "--steps", "3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.strip().splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [64, 224]
    assert all(r[2].endswith("%") and float(r[3]) > 0 for r in rows)  # MFU and memory
    if compile_ == "on":  # (eager, the warm-up's first steps may print as 0.0 s)
        assert all(float(r[4]) > 0 for r in rows)  # compile seconds


@needs_fmnist
@pytest.mark.compile
def test_compiled_bf16_training_on_gpu(tmp_path):
    cfg = tiny_config("train.budget=40steps", "train.device=cuda", "train.compile=on")
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 40 and torch.cuda.get_device_name() in summary["device"]
    assert summary["warmup_time_s"] > 0  # compilation of both sizes, not charged
    assert summary["config"]["train"]["precision"] == "auto"
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("mfu" in r for r in logs)


@needs_fmnist
def test_nonfinite_steps_are_skipped_on_device_between_syncs(tmp_path):
    cfg = tiny_config("train.budget=24steps", "train.device=cuda", "train.compile=off",
                      "train.sync_every=8", "checkpoint.every_steps=8", "train.max_bad_steps=3")
    trainer = Trainer(cfg, tmp_path)
    real = trainer.loss_fn
    bad = {5}

    def loss_fn(logits, y):
        loss = real(logits, y)
        return loss * math.nan if trainer.clock.steps + 1 in bad else loss
    trainer.loss_fn = loss_fn
    summary = trainer.run()
    assert summary["faults"]["nonfinite_steps"] == 1 and summary["faults"]["rollbacks"] == 0
    assert summary["images_seen"] == 23 * 64


def test_a_checkpoint_restores_the_gpus_random_stream(tmp_path):
    """The trainer's saved CUDA random state (dropout, mixup and erasing draw from it) is one
    tensor, this GPU's, and restoring it repeats the GPU's draws exactly."""
    trainer = Trainer(tiny_config("train.device=cuda", "train.compile=off"), tmp_path)
    state = trainer.rng_state()
    assert isinstance(state["cuda"], torch.Tensor)
    first = torch.rand(1000, device="cuda")
    trainer.set_rng_state(state)
    assert torch.equal(torch.rand(1000, device="cuda"), first)
