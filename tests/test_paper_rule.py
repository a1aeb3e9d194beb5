"""The paper's rule in a time budget ("add M px every N epochs"): each size lasts N epochs as
trained, however far off the warm-up's rates were."""
import pytest

from budgetvit import checkpoint, curriculum
from budgetvit.train import train
from budgetvit.warmup import WarmUp

from .conftest import crash_at_step, tiny_config


def test_corrected_rates_end_the_size_being_trained_where_asked():
    """20 px, planned (at 4 s/epoch: its stage extended once) from 2 s, started at 2.5 s and
    ends at 5 s, having trained at 3 s/epoch where the warm-up measured 2 (N = 2 epochs)."""
    sizes, measured = [16, 20, 24, 28], {16: 1.0, 20: 2.0, 24: 3.0, 28: 4.0}
    rates = {**measured, 20: 4.0}
    out = curriculum.corrected_rates(sizes, 2.0, rates, measured, 20, start=2.5, end=5.0,
                                     observed=3.0)
    assert out[16] == pytest.approx(1.25)  # 16 px: to 2.5 s
    assert out[20] == pytest.approx(1.25)  # [2.5, 5)
    assert out[24] == pytest.approx(4.5) and out[28] == pytest.approx(6.0)  # measured x 3/2
    plan = curriculum.from_shares(curriculum.paper_shares(sizes, 2.0, out, 20.0))
    assert [(s.size, s.start, s.end) for s in plan] == [
        (16, 0.0, 0.125), (20, 0.125, 0.25), (24, 0.25, 0.7), (28, 0.7, 1.0)]


def paper(budget: str, *extra: str):
    return tiny_config(  # (640 images: an epoch is 10 steps of 64)
        "data.dataset=synthetic", "data.synthetic_images=640", "curriculum.mode=paper",
        "curriculum.start_size_px=16", "curriculum.step_px=4", "curriculum.every_epochs=1.5",
        f"train.budget={budget}", "train.ema=false", "train.warmup_steps=2",
        "checkpoint.every_steps=5", *extra)


def warm_up_off_by(monkeypatch, factor: float) -> list:
    """The warm-up's rates made `factor` times what it measured; returns the (sizes, measure)
    of each warm-up."""
    calls, real_warm_up = [], WarmUp.warm_up

    def warm_up(self, sizes, measure):
        calls.append((sizes, measure))
        real_warm_up(self, sizes, measure)
        if measure:
            self.seconds_per_epoch = {s: r * factor for s, r in self.seconds_per_epoch.items()}
            self.measured_rates = dict(self.seconds_per_epoch)
    monkeypatch.setattr(WarmUp, "warm_up", warm_up)
    return calls


@pytest.mark.parametrize("off_by", [10.0, 0.1])
def test_each_size_trains_its_epochs_when_the_warm_up_timed_it_wrong(tmp_path, monkeypatch,
                                                                     capsys, off_by):
    """The warm-up's rates made 10x too slow (the plan gives each size 10x its epochs) or 10x
    too fast (a tenth of them, then the final size): each size before the final one trains
    its 1.5 epochs all the same (to within a step, 0.1 epoch here), and a note says where one
    ended off the plan; a run stopped and resumed keeps to the corrected plan."""
    warm_up_off_by(monkeypatch, off_by)
    if off_by > 1:  # stopped in the 20 px stage (16 px ends after 15 steps), then resumed
        crash_at_step(paper("2.5s"), tmp_path, 22)
    summary = train(paper("2.5s"), tmp_path)
    said = capsys.readouterr().out
    stages = summary["stages"]
    assert [st["img_size"] for st in stages] == [16, 20, 24, 28]
    assert all(1.5 <= st["epochs"] < 1.6 for st in stages[:3]), stages
    assert [s["size"] for s in summary["plan"]] == [16, 20, 24, 28]
    for stage, planned in zip(stages[:3], summary["plan"]):  # the plan as it was trained
        assert planned["end"] * 2.5 == pytest.approx(stage["end_s"], abs=0.1)
    # Said where a size ended off the plan: 16 px surely; later ones where their scaled
    # rates were off too
    assert "note: 16px trained its 1.5 epochs by " in said
    for size in (16, 20, 24):
        assert said.count(f"note: {size}px trained its 1.5 epochs by ") <= 1
    saved = checkpoint.load_latest(tmp_path)
    assert saved["plan"] == summary["plan"]


@pytest.mark.parametrize("off_by, stop", [(5.0, 41), (0.1, 22)])
def test_a_step_budgets_run_resumed_in_seconds_goes_on_from_its_history(tmp_path, monkeypatch,
                                                                       off_by, stop):
    """Stopped at step 41 (resumed at 24 px, 10 of its 15 steps in) or 22 (at 20 px, 5 steps
    in) of a 60-step run,
    resumed with a time budget whose plan, made at rates 5x too slow or 10x too fast, puts
    the run back at an earlier size or past sizes it has not trained: it goes on from the size
    it was at, through every later one, each for its epochs; and compiles, before the clock,
    that size and every later one (any of them may come)."""
    from .test_speed import compile_with_eager_backend
    compile_with_eager_backend(monkeypatch)
    calls = warm_up_off_by(monkeypatch, off_by)
    crash_at_step(paper("60steps", "train.compile=on"), tmp_path, stop)
    calls.clear()
    summary = train(paper("3s", "train.compile=on"), tmp_path)
    at = 24 if stop > 30 else 20
    assert calls == [([s for s in (16, 20, 24, 28) if s >= at], False)]
    stages = summary["stages"]
    assert [st["img_size"] for st in stages] == [16, 20, 24, 28]
    assert all(1.5 <= st["epochs"] < 1.6 for st in stages[:3]), stages
