"""data.holdout: a fixed part of the training split evaluated instead of the test split."""
import pytest
import torch

from budgetvit.config import ConfigError
from budgetvit.data import fashion_mnist
from budgetvit.data.holdout import holdout_rows
from budgetvit.train import Trainer

from .conftest import needs_fmnist, tiny_config


def test_holdout_rows_are_fixed_disjoint_and_complete():
    keep, held = holdout_rows(1000, 0.1)
    assert len(held) == 100 and len(keep) == 900
    assert sorted([*keep, *held]) == list(range(1000))
    assert list(held) == sorted(held) and list(keep) == sorted(keep)
    again_keep, again_held = holdout_rows(1000, 0.1)  # no seed argument: every run the same
    assert (again_held == held).all() and (again_keep == keep).all()
    assert held.max() > 900 and held.min() < 100  # drawn from the whole split, not its tail
    with pytest.raises(ConfigError, match="data.holdout=0.001 holds out 0 of the 100 training"):
        holdout_rows(100, 0.001)


@needs_fmnist
def test_fmnist_run_evaluates_on_held_out_train_images(tmp_path):
    trainer = Trainer(tiny_config("data.holdout=0.1", "train.budget=4steps"), tmp_path)
    keep, held = holdout_rows(60000, 0.1)
    train_x, train_y = fashion_mnist.load("train")
    assert trainer.data.num_images == 54000
    assert torch.equal(trainer.data.test_images, train_x[torch.from_numpy(held)])
    assert torch.equal(trainer.data.labels, train_y[torch.from_numpy(keep)])
    summary = trainer.run()
    assert summary["eval_split"] == "holdout (0.1 of train, 6000 images)"
    assert summary["evals"][-1]["eval_images"] == 6000
