"""The EMA of the weights against the formula it implements: decay ramp, cap, skipped steps."""
import torch
from torch import nn

from budgetvit.ema import EMA


def test_ema_follows_the_ramped_decay_and_skips_bad_steps():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    expected = [p.detach().clone() for p in model.parameters()]
    good = 0
    for ok in [True, True, False, True, True, True]:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, torch.tensor(ok))
        if ok:  # decay (1 + n) / (10 + n) over the n good updates so far, capped at 0.5
            decay = min((1 + good) / (10 + good), 0.5)
            expected = [decay * e + (1 - decay) * p.detach()
                        for e, p in zip(expected, model.parameters())]
            good += 1
        for got, want in zip(ema.module.parameters(), expected):
            torch.testing.assert_close(got, want)
    assert ema.updates.item() == good == 5

    restored = EMA(nn.Linear(3, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates.item() == 5
    for a, b in zip(restored.module.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)


def test_ema_copy_is_frozen_and_separate():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    with torch.no_grad():
        model.weight.zero_()
    assert ema.module.weight.abs().sum() > 0
