"""Learning-rate schedule and image-size curriculum as functions of budget progress."""
import math

import pytest

from budgetvit import curriculum
from budgetvit.config import Config, ConfigError, parse_budget
from budgetvit.schedules import lr_at


def test_lr_warmup_and_cosine_endpoints():
    peak, floor, warm = 1e-3, 1e-5, 0.1
    assert lr_at(0.0, peak, floor, warm) == 0.0
    assert lr_at(0.05, peak, floor, warm) == pytest.approx(peak / 2)
    assert lr_at(warm, peak, floor, warm) == pytest.approx(peak)
    assert lr_at(0.55, peak, floor, warm) == pytest.approx((peak + floor) / 2)  # cosine midpoint
    assert lr_at(1.0, peak, floor, warm) == pytest.approx(floor, abs=1e-15)
    assert lr_at(1.7, peak, floor, warm) == pytest.approx(floor, abs=1e-15)  # clamped


def test_lr_linear_decay_and_monotone():
    peak, floor = 2.0, 0.0
    assert lr_at(0.6, peak, floor, 0.2, "linear") == pytest.approx(1.0)
    values = [lr_at(p / 100, 1.0, 0.01, 0.05) for p in range(5, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="decay"):
        lr_at(0.5, 1.0, 0.0, 0.1, "step")


def test_lr_without_warmup_starts_at_peak():
    assert lr_at(0.0, 1.0, 0.0, 0.0) == 1.0


def test_paper_sizes_are_multiples_up_to_final():
    assert curriculum.paper_sizes(32, 32, 224) == [32, 64, 96, 128, 160, 192, 224]
    assert curriculum.paper_sizes(16, 8, 28) == [16, 24, 28]
    for s in curriculum.paper_sizes(64, 32, 224):
        assert s % 16 == 0


def test_paper_rule_converts_epochs_to_budget_shares():
    # 2 epochs per size; an epoch at 16 px takes 10 s, at 20 px 20 s; budget 100 s.
    shares = curriculum.paper_shares([16, 20, 24], 2.0, {16: 10.0, 20: 20.0, 24: 40.0}, 100.0)
    assert shares == [(16, pytest.approx(0.2)), (20, pytest.approx(0.4)),
                      (24, pytest.approx(0.4))]
    plan = curriculum.from_shares(shares)
    assert [(s.size, s.start, s.end) for s in plan] == [
        (16, 0.0, pytest.approx(0.2)), (20, pytest.approx(0.2), pytest.approx(0.6)),
        (24, pytest.approx(0.6), 1.0)]
    assert curriculum.size_at(plan, 0.0) == 16
    assert curriculum.size_at(plan, 0.59) == 20
    assert curriculum.size_at(plan, 0.61) == 24
    assert curriculum.size_at(plan, 1.0) == 24


@pytest.mark.parametrize("shares, want", [((0.1, 0.2, 0.7), [10, 20, 70]),
                                          ((0.1, 0.2, 0.3, 0.4), [10, 20, 30, 40]),
                                          ((0.2, 0.2, 0.2, 0.4), [20, 20, 20, 40])])
def test_stages_of_a_step_budget_get_their_shares_of_the_steps(shares, want):
    """Step k of 100 trains at progress k / 100: a stage of share 0.2 gets 20 steps, even
    where the shares' float sum ends a stage just above a step (0.1 + 0.2 > 0.3)."""
    plan = curriculum.from_shares([(16 + 4 * i, share) for i, share in enumerate(shares)])
    sizes = [curriculum.size_at(plan, k / 100) for k in range(100)]
    assert [sizes.count(stage.size) for stage in plan] == want


def test_paper_rule_truncates_when_budget_ends_early():
    shares = curriculum.paper_shares([16, 20, 24], 5.0, {16: 10.0, 20: 20.0, 24: 40.0}, 80.0)
    assert [s for s, _ in shares] == [16, 20]
    assert math.isclose(sum(sh for _, sh in shares), 1.0)


def test_paper_rates_resumed_at_new_rates_keep_the_past_and_convert_what_is_left():
    """Rule timeline at the old rates, 2 epochs per size: 16 px [0, 2), 20 px [2, 6), 24 px
    [6, 12), 28 px after. Resumed at 4 with 1 epoch of 20 px done on a machine twice as fast:
    16 px stays 1 s/epoch, 20 px lasts its 2 s so far plus its 1 epoch left at 1 s (3 s in
    all: 1.5 s/epoch), the later sizes take the new rates."""
    sizes, old = [16, 20, 24, 28], {16: 1.0, 20: 2.0, 24: 3.0, 28: 4.0}
    new = {size: rate / 2 for size, rate in old.items()}
    rates = curriculum.resumed_rates(sizes, 2.0, old, new, 4.0, done=1.0)
    assert rates == {16: 1.0, 20: 1.5, 24: 1.5, 28: 2.0}
    plan = curriculum.from_shares(curriculum.paper_shares(sizes, 2.0, rates, 20.0))
    assert [(s.size, s.start * 20, s.end * 20) for s in plan] == [
        (16, 0, 2), (20, 2, 5), (24, 5, 8), (28, 8, 20)]
    # What is left is counted from the epochs trained, not from the old rate's estimate.
    assert curriculum.resumed_rates(sizes, 2.0, old, new, 4.0, done=1.5)[20] == 1.25
    assert curriculum.resumed_rates(sizes, 2.0, old, new, 4.0, done=2.5)[20] == 1.0  # (over)
    # At a boundary the next size is the one being trained; in the final size nothing moves.
    assert curriculum.resumed_rates(sizes, 2.0, old, new, 2.0, done=0.0) == {
        16: 1.0, 20: 1.0, 24: 1.5, 28: 2.0}
    assert curriculum.resumed_rates(sizes, 2.0, old, new, 12.5, done=0.5) == {**old, 28: 2.0}
    # A size not timed (ending within rounding of now) keeps its old rate.
    assert curriculum.resumed_rates(sizes, 2.0, old, {24: 1.5, 28: 2.0}, 4.0, done=1.0)[20] \
        == 2.0


def test_paper_rates_resumed_twice_in_one_size_end_it_after_its_epochs():
    """10 epochs of 16 px at 10 s/epoch; at 20 s (2 epochs done) on to a world twice as fast,
    at 40 s (6 epochs done) back: the 4 epochs left at 10 s end the size at 80 s (a rate read
    back from the first re-plan's blend would give 73.3 s)."""
    sizes = [16, 28]
    once = curriculum.resumed_rates(sizes, 10.0, {16: 10.0, 28: 10.0}, {16: 5.0, 28: 5.0},
                                    20.0, done=2.0)
    assert once[16] * 10 == 60.0
    twice = curriculum.resumed_rates(sizes, 10.0, once, {16: 10.0, 28: 10.0}, 40.0, done=6.0)
    assert twice[16] * 10 == 80.0


def test_make_plan_for_each_mode():
    cfg = Config()
    cfg.curriculum.mode, cfg.curriculum.stages = "stages", "16:0.5,20:0.25,28:0.25"
    plan = curriculum.make_plan(cfg, {}, 300)
    assert [(s.size, s.start) for s in plan] == [(16, 0.0), (20, 0.5), (28, 0.75)]
    cfg.curriculum.mode = "off"
    assert [(s.size, s.start, s.end) for s in curriculum.make_plan(cfg, {}, 300)] == [(28, 0.0, 1.0)]
    cfg.curriculum.mode = "paper"
    cfg.curriculum.start_size_px, cfg.curriculum.step_px, cfg.curriculum.every_epochs = 20, 4, 1
    plan = curriculum.make_plan(cfg, {20: 30.0, 24: 60.0, 28: 90.0}, 300.0)
    assert [s.size for s in plan] == [20, 24, 28]
    assert plan[1].start == pytest.approx(0.1) and plan[2].start == pytest.approx(0.3)
    assert curriculum.planned_sizes(cfg) == [20, 24, 28]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("24h", 86400),
                                           ("1d", 86400), ("1h30m", 5400), ("1d12h", 129600),
                                           ("5m00s", 300), ("0m06s", 6), (" 2.5m ", 150),
                                           ("1h 30m", 5400), ("5 m", 300)])
def test_budgets_in_one_unit_or_several_as_headers_print_them(text, seconds):
    assert parse_budget(text) == (seconds, "seconds")


@pytest.mark.parametrize("text", ["", "m", "5x", "30m1h", "30m 1h", "-5m", "five minutes"])
def test_budgets_that_are_no_duration_are_refused(text):
    with pytest.raises(ConfigError, match="expected a duration like 90s, 5m, 1h30m"):
        parse_budget(text)
