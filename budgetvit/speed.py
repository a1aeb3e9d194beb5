"""`budgetvit speed`: training-step throughput (forward + backward + AdamW step), measured
after warm-up as the median of several repeats, optionally next to timm's same-shaped ViT and
next to the full trainer on the same model, batch and size."""
from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from .config import ConfigError
from .models import create_model
from .runtime import Runtime, mfu, peak_flops


def timm_twin(cfg):
    """timm's VisionTransformer with our model's shape (plain FFN, GELU): for vit_s16 this is
    exactly vit_small_patch16_224 with dynamic_img_size=True, the way most users run it."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise ConfigError("--compare-timm needs timm: pip install 'budgetvit[dev]'") from None
    return VisionTransformer(img_size=cfg.base_img_size, patch_size=cfg.patch_size,
                             in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                             embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads,
                             mlp_ratio=cfg.mlp_ratio, dynamic_img_size=True)


def time_steps(model, in_chans: int, size: int, batch: int, steps: int, repeats: int,
               rt: Runtime, compile_model: bool) -> dict:
    """images/s (median over repeats) and peak memory of plain training steps."""
    model = model.to(rt.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=rt.cuda or None)
    fwd = torch.compile(model, dynamic=False) if compile_model else model
    x = torch.randn(batch, in_chans, size, size, device=rt.device)
    y = torch.randint(0, 10, (batch,), device=rt.device)

    def step():
        with rt.autocast():
            loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    rt.sync()
    warmup_s = time.perf_counter() - t0
    if rt.cuda:
        torch.cuda.reset_peak_memory_stats(rt.device)
    rates = []
    for _ in range(repeats):
        rt.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rt.sync()
        rates.append(steps * batch / (time.perf_counter() - t0))
    mem = torch.cuda.max_memory_allocated(rt.device) / 2**30 if rt.cuda else None
    return {"img_per_s": statistics.median(rates), "peak_mem_gib": mem, "warmup_s": warmup_s}


def trainer_rate(model: str, size: int, batch: int, steps: int, device: str) -> float:
    """images/s of the real trainer (data, augmentation, clock, EMA, logging included) on
    Fashion-MNIST at a fixed size, over `steps` steps of a step budget."""
    from .presets import fmnist
    from .train import Trainer
    cfg = fmnist()
    cfg.model.name = model
    cfg.curriculum.mode, cfg.curriculum.final_size_px = "off", size
    cfg.train.budget, cfg.train.batch_size, cfg.train.device = f"{steps}steps", batch, device
    cfg.train.log_every, cfg.checkpoint.every_s = 10**9, 0.0
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.run()
        return trainer.images / trainer.clock.train_s


def run_speed(args) -> int:
    from .runtime import resolve
    from .config import TrainSection
    rt = resolve(TrainSection(device=args.device, compile=args.compile))
    try:
        ours = create_model(args.model, num_classes=10 if args.trainer else 1000,
                            in_chans=1 if args.trainer else 3)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = ours.cfg
    for s in args.sizes:
        if s % cfg.patch_size:
            raise ConfigError(f"--img-size {s} is not a multiple of the patch size {cfg.patch_size}")
    peak = peak_flops(rt.device)
    print(f"device {rt.describe()}, {args.model}, batch {args.batch_size}, "
          f"{'bf16 autocast' if rt.amp_dtype else 'fp32'}, compile {'on' if rt.compile else 'off'}"
          f", median of {args.repeats} x {args.steps} steps")
    header = f"{'size':>5} {'img/s':>9} {'MFU':>6} {'mem GiB':>8} {'warm-up s':>9}"
    if args.compare_timm:
        header += f" {'timm img/s':>11} {'ratio':>6}"
    if args.trainer:
        header += f" {'trainer img/s':>14} {'overhead':>9}"
    print(header)
    for s in args.sizes:
        torch.manual_seed(0)
        r = time_steps(create_model(cfg), cfg.in_chans, s, args.batch_size, args.steps, args.repeats, rt,
                       rt.compile)
        util = f"{100 * mfu(cfg, s, r['img_per_s'], peak):5.1f}%" if peak else "    -"
        mem = f"{r['peak_mem_gib']:8.2f}" if r["peak_mem_gib"] is not None else f"{'-':>8}"
        line = f"{s:>5} {r['img_per_s']:9.1f} {util:>6} {mem} {r['warmup_s']:9.1f}"
        if args.compare_timm:
            torch.manual_seed(0)
            # timm as most users run it: eager (no compile), bf16 autocast on CUDA.
            t = time_steps(timm_twin(cfg), cfg.in_chans, s, args.batch_size, args.steps, args.repeats, rt,
                           compile_model=False)
            line += f" {t['img_per_s']:11.1f} {r['img_per_s'] / t['img_per_s']:6.2f}"
        if args.trainer:
            rate = trainer_rate(args.model, s, args.batch_size,
                                args.steps * args.repeats + 3, args.device)
            line += f" {rate:14.1f} {100 * (1 - rate / r['img_per_s']):8.1f}%"
        print(line, flush=True)
    return 0
