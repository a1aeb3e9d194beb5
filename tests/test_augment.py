"""Batched augmentation against torchvision's per-image reference."""
import pytest
import torch
from torchvision.transforms import v2

from budgetvit.data import augment
from budgetvit.data.augment import randaugment, resized_crop_flip

from .conftest import fmnist_images

NAMES = list(v2.RandAugment._AUGMENTATION_SPACE)


def natural_batch(n: int, size: int = 32, width: int | None = None) -> torch.Tensor:
    """n real Fashion-MNIST images as RGB uint8 (B, 3, size, width or size), each tinted
    differently so that colour ops have colour to act on."""
    images, _ = fmnist_images(n)
    x = torch.from_numpy(images)[:, None].float()
    x = torch.nn.functional.interpolate(x, size=(size, width or size), mode="bilinear")
    tint = torch.linspace(0.4, 1.0, 3 * n).view(n, 3, 1, 1)
    return (x * tint).round().clamp(0, 255).to(torch.uint8)


def torchvision_choice(seed: int) -> tuple[str, bool]:
    """The op and sign that v2.RandAugment(num_ops=1) draws after torch.manual_seed(seed): an
    index into its op table, then, for a signed op, a draw <= 0.5 for a negative magnitude."""
    torch.manual_seed(seed)
    name = NAMES[int(torch.randint(len(NAMES), ()))]
    signed = v2.RandAugment._AUGMENTATION_SPACE[name][1]
    return name, bool(signed and torch.rand(()) <= 0.5)


def seed_for_every_draw() -> dict[tuple[str, bool], int]:
    """A seed under which torchvision's RandAugment draws each (op, negative) there is."""
    wanted = {(name, negative) for name, (_, signed) in v2.RandAugment._AUGMENTATION_SPACE.items()
              for negative in ((False, True) if signed else (False,))}
    seeds = {}
    for seed in range(10_000):
        seeds.setdefault(torchvision_choice(seed), seed)
        if len(seeds) == len(wanted):
            return seeds
    raise AssertionError(f"no seed draws {wanted - set(seeds)}")


@pytest.mark.parametrize("magnitude,shape", [(9, (32, 32)), (0, (32, 32)), (30, (32, 32)),
                                             (9, (24, 40))])
def test_randaugment_gives_every_image_what_torchvision_gives_it_alone(magnitude, shape):
    """Each image draws a different (op, sign), every one there is (geometric ops resampled
    together, colour ops one call each): each result must equal torchvision's RandAugment run
    on that image alone with the same draw, bit for bit."""
    seeds = seed_for_every_draw()
    x = natural_batch(len(seeds), *shape)
    expected, u = [], torch.empty(len(seeds), 2)
    for i, ((name, negative), seed) in enumerate(seeds.items()):
        torch.manual_seed(seed)
        expected.append(v2.RandAugment(num_ops=1, magnitude=magnitude)(x[i]))
        u[i, 0] = (NAMES.index(name) + 0.5) / len(NAMES)
        u[i, 1] = 0.25 if negative else 0.75
    out = randaugment(x, 1, magnitude, u)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i, draw in enumerate(seeds):
        assert torch.equal(out[i], expected[i]), draw
    changed = {draw for i, draw in enumerate(seeds) if not torch.equal(out[i], x[i])}
    if magnitude == 9:  # all change their image but Identity, and Solarize (it inverts pixels
        # above 70% of 255: this dark image has none)
        assert changed == set(seeds) - {("Identity", False), ("Solarize", False)}


@pytest.mark.parametrize("shape", [(2, 5), (6, 2), (3, 3)])
def test_sharpness_of_tiny_images_is_torchvision_s(shape):
    """Sides of 2 px are all border (torchvision returns the image); 3 px has one inner pixel."""
    x = natural_batch(2, *shape)
    for factor in (0.1, 1.9):
        expected = torch.stack([v2.functional.adjust_sharpness(im, factor) for im in x])
        assert torch.equal(augment.sharpen(x, factor), expected)


def test_randaugment_rounds_compose_and_leave_the_input_alone():
    x = natural_batch(6)
    before, rng = x.clone(), torch.get_rng_state()
    u = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    two = randaugment(x, 2, 9, u)
    assert torch.equal(x, before)  # the caller's batch is not modified
    assert torch.equal(torch.get_rng_state(), rng)  # nor the global random state
    assert torch.equal(two, randaugment(randaugment(x, 1, 9, u[:, :2]), 1, 9, u[:, 2:]))
    assert torch.equal(randaugment(x, 0, 9, u[:, :0]), x)


def test_crop_scale_min_1_is_not_no_crop():
    """What resized_crop_flip's docstring says about its clamp: at scale_min=1 every crop keeps
    one whole side and 86.6% or more of the other, and the whole image only at ratio 1."""
    ramp = torch.arange(64.0) / 63
    x = torch.stack([ramp.expand(64, 64), ramp[:, None].expand(64, 64)])  # (col, row) coords
    u = torch.rand(500, 5, generator=torch.Generator().manual_seed(0))
    out = resized_crop_flip(x.expand(500, 2, 64, 64), 32, 1.0, False, u)
    # Side shares: a linear ramp resamples exactly; 32 samples span 31/32 of the crop.
    w = (out[:, 0, :, -1] - out[:, 0, :, 0]).mean(1) * 63 / 62
    h = (out[:, 1, -1, :] - out[:, 1, 0, :]).mean(1) * 63 / 62
    assert torch.allclose(torch.maximum(w, h), torch.ones(500), atol=1e-4)
    kept = w * h
    assert kept.min() > (3 / 4) ** 0.5 - 1e-4 and kept.min() < 0.88
    assert (kept < 0.99).float().mean() > 0.9


def test_random_erasing_draws_as_timm_does():
    """Erased boxes at 16 px (where rounding and edge placement matter most): the share of
    pixels erased and how often each row is erased match timm's RandomErasing (the DeiT recipe)
    over 4000 images, within sampling noise; and prob is the share of images erased."""
    from timm.data.random_erasing import RandomErasing
    n, S = 4000, 16
    torch.manual_seed(0)
    ours = (augment.random_erasing(torch.full((n, 3, S, S), 1e6), 1.0) != 1e6).any(1)
    theirs = RandomErasing(probability=1.0, mode="pixel", device="cpu")
    ref = torch.stack([(theirs(torch.full((3, S, S), 1e6)) != 1e6).any(0) for _ in range(n)])
    ours, ref = ours.float(), ref.float()
    assert abs(ours.mean() - ref.mean()) < 0.01  # ~0.175 of the pixels
    rows, ref_rows = ours.mean((0, 2)), ref.mean((0, 2))  # (S,): 0.05 at the edges, 0.25 mid
    assert (rows - ref_rows).abs().max() < 0.015, (rows, ref_rows)
    assert abs(rows[0] - rows[-1]) < 0.015  # no side favoured
    some = augment.random_erasing(torch.zeros(n, 1, S, S), 0.25)
    assert abs((some != 0).flatten(1).any(1).float().mean() - 0.25) < 0.03


def test_randaugment_builds_nothing_on_the_device_from_host_lists(monkeypatch):
    """The CPU's view of test_cuda's sync check: torch.tensor(list, device=...) is a blocking
    copy on a GPU, and torchvision's geometric ops and sharpness make one per call. None may
    happen inside randaugment: its matrices reach the device non-blocking."""
    made_on_device = []
    real = torch.tensor

    def watched(*args, **kwargs):
        if kwargs.get("device") is not None:
            made_on_device.append(kwargs["device"])
        return real(*args, **kwargs)
    x = natural_batch(64, 24)
    u = torch.rand(64, 4, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch, "tensor", watched)
    randaugment(x, 2, 9, u)
    assert made_on_device == []


def test_the_trainer_erases_each_image_before_mixing_the_batch(tmp_path):
    """DeiT's order: random erasing is part of each image's transform, mixup then acts on the
    batch. The trainer's batch augmentation is that composition, draw for draw, and not the
    reverse (which would leave pure noise where an image was erased)."""
    from budgetvit.evaluate import normalize
    from budgetvit.train import Trainer
    from .conftest import tiny_config
    trainer = Trainer(tiny_config("data.dataset=synthetic", "data.synthetic_images=256",
                                  "aug.mixup=0.8", "aug.cutmix=0", "aug.random_erasing=1"),
                      tmp_path)
    raw, y = trainer.data.next_batch()
    x = normalize(raw, trainer.data.mean, trainer.data.std)

    def seeded(fn):
        torch.manual_seed(0)
        return fn()
    got_x, got_y = seeded(lambda: trainer.augment_batch(raw, y))
    want_x, want_y = seeded(lambda: trainer.mix(augment.random_erasing(x, 1.0), y))
    assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    reverse = seeded(lambda: augment.random_erasing(trainer.mix(x, y)[0], 1.0))
    assert not torch.allclose(got_x, reverse)
