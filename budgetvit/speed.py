"""`budgetvit speed`: training-step throughput (forward + backward + AdamW step), measured
after warm-up as the median of several repeats, optionally next to timm's same-shaped ViT
(timed turn about with ours) and next to the full trainer on the same model, batch and size."""
from __future__ import annotations

import contextlib
import gc
import io
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from .config import Config, ConfigError, ModelSection
from .models import create_model
from .presets import fmnist
from .runtime import Runtime, compile_failure, mfu, peak_flops


def timm_twin(cfg):
    """timm's VisionTransformer with our model's shape (plain FFN, GELU) and drop path: for
    vit_s16 this is exactly vit_small_patch16_224 with dynamic_img_size=True, the way most
    users run it."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise ConfigError("--compare-timm needs timm: pip install 'budgetvit[dev]'") from None
    return VisionTransformer(img_size=cfg.base_img_size, patch_size=cfg.patch_size,
                             in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                             embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads,
                             mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path,
                             dynamic_img_size=True)


class StepTimer:
    """Plain training steps (forward, backward, fused AdamW as in the trainer) of one model on
    fixed random data, timed in blocks so that two models can be timed turn about: measured
    one after the other, the first suffers from a cold machine (allocator, caches, clocks)."""

    def __init__(self, model, in_chans: int, size: int, batch: int, rt: Runtime,
                 compile_model: bool, sizes: int = 1):
        self.model = model.to(rt.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.fwd = rt.compiled(self.model, sizes) if compile_model else self.model
        self.x = torch.randn(batch, in_chans, size, size, device=rt.device)
        self.y = torch.randint(0, 10, (batch,), device=rt.device)
        self.rt, self.batch = rt, batch
        self.rates: list[float] = []
        self.peak_mem_gib: float | None = None

    def step(self) -> None:
        with self.rt.autocast():
            loss = F.cross_entropy(self.fwd(self.x).float(), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def warm_up(self, steps: int = 3) -> float:
        """Untimed steps (compilation included); returns their seconds."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.rt.sync()
        return time.perf_counter() - t0

    def resident_bytes(self) -> int:
        """Memory this model holds between steps: weights, AdamW state, the input batch."""
        state = [v for st in self.opt.state.values() for v in st.values() if torch.is_tensor(v)]
        tensors = [*self.model.parameters(), *state, self.x, self.y]
        return sum(t.numel() * t.element_size() for t in tensors)

    def time_block(self, steps: int) -> None:
        if self.rt.cuda:  # the other model is resident too: count only what this one adds
            torch.cuda.reset_peak_memory_stats(self.rt.device)
            before = torch.cuda.memory_allocated(self.rt.device)
        self.rt.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.rt.sync()
        self.rates.append(steps * self.batch / (time.perf_counter() - t0))
        if self.rt.cuda:
            step_peak = torch.cuda.max_memory_allocated(self.rt.device) - before
            mem = (step_peak + self.resident_bytes()) / 2**30
            self.peak_mem_gib = max(mem, self.peak_mem_gib or 0.0)

    @property
    def img_per_s(self) -> float:
        return statistics.median(self.rates)


def trainer_config(model: str, size: int, batch: int, steps: int, args) -> Config:
    """The fmnist run trainer_rate times: the bare loop's model (without the preset's
    overrides) at a fixed size, `steps` steps, the speed command's device and compile settings."""
    cfg = fmnist()
    cfg.model = ModelSection(name=model, drop_path=args.drop_path)
    cfg.curriculum.mode, cfg.curriculum.final_size_px = "off", size
    t = cfg.train
    t.budget, t.batch_size, t.device, t.compile = f"{steps}steps", batch, args.device, args.compile
    t.compile_scope, t.compile_mode = args.compile_scope, args.compile_mode
    t.log_every, cfg.checkpoint.every_s = 10**9, 0.0
    # The run ends with an evaluation (model and EMA), which is not timed: evaluate on a 1%
    # holdout of train (600 images) instead of the 10,000 test images.
    cfg.data.holdout = 0.01
    return cfg


def trainer_rate(model: str, size: int, batch: int, steps: int, args) -> float:
    """images/s of the real trainer (data, augmentation, clock, EMA, logging included) on
    Fashion-MNIST (trainer_config)."""
    from .train import Trainer
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(trainer_config(model, size, batch, steps, args), out)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.run()
        return trainer.images / trainer.clock.train_s


def run_speed(args) -> int:
    from .runtime import check_device_option, resolve
    from .config import TrainSection
    check_device_option(args.device)
    if not 0 <= args.drop_path < 1:
        raise ConfigError(f"--drop-path must be in [0, 1), got {args.drop_path}")
    rt = resolve(TrainSection(device=args.device, compile=args.compile,
                              compile_scope=args.compile_scope, compile_mode=args.compile_mode))
    try:
        ours = create_model(args.model, num_classes=10 if args.trainer else 1000,
                            in_chans=1 if args.trainer else 3, drop_path=args.drop_path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = ours.cfg
    for s in args.sizes:
        if s % cfg.patch_size:
            raise ConfigError(f"size {s} (--sizes) is not a multiple of the patch size "
                              f"{cfg.patch_size}")
    peak = peak_flops(rt.device)
    print(f"device {rt.describe()}, {args.model}, batch {args.batch_size}, "
          f"{'bf16 autocast' if rt.amp_dtype else 'fp32'}, compile "
          f"{f'on ({rt.compile_scope}, {rt.compile_mode})' if rt.compile else 'off'}"
          f"{f', drop path {args.drop_path:g}' if args.drop_path else ''}"
          f", median of {args.repeats} x {args.steps} steps")
    if not rt.compile and (args.compile_mode, args.compile_scope) != ("default", "blocks"):
        print("note: --compile-mode and --compile-scope apply with compile on (--compile on, or "
              "--compile auto on a GPU)")
    header = f"{'size':>5} {'img/s':>9} {'MFU':>6} {'mem GiB':>8} {'warm-up s':>9}"
    if args.compare_timm:
        header += f" {'timm img/s':>11} {'ratio':>6}"
    if args.trainer:
        header += f" {'trainer img/s':>14} {'overhead':>9}"
    print(header)
    for s in args.sizes:
        try:
            print(size_row(cfg, s, rt, peak, args), flush=True)
        except Exception as e:
            if (cause := compile_failure(e)) is None:
                raise
            raise ConfigError(f"torch.compile failed at {s} px: {cause} (--compile off "
                              f"measures eager)") from None
        gc.collect()  # this size's models and optimizer states must not weigh on the next
    return 0


def size_row(cfg, s: int, rt: Runtime, peak: float | None, args) -> str:
    """Time our model (and timm's, the trainer's) at size `s`; one row of the table."""
    torch.manual_seed(0)
    timers = [StepTimer(create_model(cfg), cfg.in_chans, s, args.batch_size, rt, rt.compile,
                        len(args.sizes))]
    if args.compare_timm:  # timm as most users run it: eager, bf16 autocast on CUDA
        timers.append(StepTimer(timm_twin(cfg), cfg.in_chans, s, args.batch_size, rt,
                                compile_model=False))
    warmup_s = [t.warm_up() for t in timers]
    for _ in range(args.repeats):  # turn about, so neither model is always measured first
        for t in timers:
            t.time_block(args.steps)
    ours = timers[0]
    util = f"{100 * mfu(cfg, s, ours.img_per_s, peak):5.1f}%" if peak else "    -"
    mem = f"{ours.peak_mem_gib:8.2f}" if ours.peak_mem_gib is not None else f"{'-':>8}"
    line = f"{s:>5} {ours.img_per_s:9.1f} {util:>6} {mem} {warmup_s[0]:9.1f}"
    if args.compare_timm:
        theirs = timers[1].img_per_s
        line += f" {theirs:11.1f} {ours.img_per_s / theirs:6.2f}"
    if args.trainer:
        rate = trainer_rate(args.model, s, args.batch_size, args.steps * args.repeats + 3, args)
        line += f" {rate:14.1f} {100 * (1 - rate / ours.img_per_s):8.1f}%"
    return line
