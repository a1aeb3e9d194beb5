"""Checks that need a CUDA GPU (run by scripts/gpu_check.sh); skipped without one."""
import json
import math

import pytest
import torch

from budgetvit.cli import main
from budgetvit.train import Trainer, train

from .conftest import needs_fmnist, tiny_config

pytestmark = [pytest.mark.cuda, needs_fmnist,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_compiled_bf16_training_on_gpu(tmp_path):
    cfg = tiny_config("train.budget=40steps", "train.device=cuda", "train.compile=on")
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 40 and torch.cuda.get_device_name() in summary["device"]
    assert summary["warmup_time_s"] > 0  # compilation of both sizes, not charged
    assert summary["config"]["train"]["precision"] == "auto"
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("mfu" in r for r in logs)


def test_nonfinite_steps_are_skipped_on_device_between_syncs(tmp_path):
    cfg = tiny_config("train.budget=24steps", "train.device=cuda", "train.sync_every=8",
                      "checkpoint.every_steps=8", "train.max_bad_steps=3")
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


def test_speed_table_on_gpu(capsys):
    assert main(["speed", "--model", "vit_ti16_local", "--img-size", "64,224",
                 "--batch-size", "64", "--steps", "3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.strip().splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [64, 224]
    assert all(r[2].endswith("%") and float(r[3]) > 0 for r in rows)  # MFU and memory
    assert all(float(r[4]) > 0 for r in rows)  # warm-up (compile) seconds
