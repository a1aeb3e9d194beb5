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


def test_fp16_step_the_scaler_skips_moves_neither_weights_nor_ema(tmp_path):
    """fp16 (CPU autocast here, as on a GPU without bf16): a step whose gradients overflow has a
    finite loss, so it is not a fault (ok True), but GradScaler skips it; the EMA, its update
    count included, must stay put like the weights."""
    import copy

    from budgetvit.train import Trainer

    from .conftest import tiny_config
    trainer = Trainer(tiny_config("train.precision=fp16", "data.dataset=synthetic",
                                  "data.synthetic_images=256", "train.ema_decay=0.99"), tmp_path)
    assert trainer.scaler.is_enabled()
    _, ok = trainer.step(*trainer.data.next_batch(), 1e-3)
    assert ok and trainer.ema.updates == 1
    trainer.scaler.update(2.0 ** 60)  # far past float16's range: every gradient overflows
    weights, ema = (copy.deepcopy(m.state_dict()) for m in (trainer.model, trainer.ema.module))
    _, ok = trainer.step(*trainer.data.next_batch(), 1e-3)
    assert ok and trainer.scaler.get_scale() == 2.0 ** 59  # skipped and backed off
    assert trainer.ema.updates == 1
    for before, module in ((weights, trainer.model), (ema, trainer.ema.module)):
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
