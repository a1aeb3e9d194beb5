"""The smaller subcommands: eval, predict, export, info, speed."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .config import ConfigError


def cmd_eval(args) -> int:
    from . import inference
    from .data import build_data, build_eval_split, eval_dataset
    from .data.tree import first_names
    from .evaluate import evaluate
    from .runtime import check_device_option, resolve
    check_device_option(args.device)
    ld = inference.load(args.checkpoint)
    cfg = ld.cfg
    cfg.train.device = args.device
    if args.data_path:
        # What the folder is decides how it is read: a cache-trained run scored on the tree's
        # own val/ JPEGs (the benchmark's split), not the cache's re-encoded, downsized copy.
        cfg.data.dataset = eval_dataset(cfg.data, args.data_path)
        cfg.data.path = args.data_path
    rt = resolve(cfg.train)
    sizes = [s for group in (args.img_size or [[cfg.curriculum.final_size_px]]) for s in group]
    for s in sizes:
        if s % ld.model.cfg.patch_size:
            raise ConfigError(f"--img-size {s} is not a multiple of the patch size "
                              f"{ld.model.cfg.patch_size}")
    data = build_eval_split(cfg, ld.classes, rt.device)
    if data is None:
        cfg.curriculum.final_size_px = max(sizes)  # (the size a cache's notes judge it for)
        data = build_data(cfg, rt.device)
        if list(data.classes) != list(ld.classes):  # labels would mean other classes
            ours, theirs = set(ld.classes), set(data.classes)
            differ = sorted(ours ^ theirs) or ["the same names in another order"]
            raise ConfigError(f"{cfg.data.path or cfg.data.dataset} has other classes than the "
                              f"checkpoint was trained on ({len(theirs)} vs {len(ours)}; "
                              f"differing: {first_names(differ)})")
    print(f"{ld.describe()}, {cfg.data.dataset} {data.eval_split}")
    for note in getattr(data, "notes", ()):  # (a cache's: left-out files, upsampled images)
        print(note)
    print(f"{'size':>6} {'top1':>8} {'top5':>8} {'top1_ema':>9} {'top5_ema':>9}")
    for s in sizes:
        r = evaluate(ld.model.to(rt.device), data, s, cfg.train.eval_batch_size, rt)
        e = (evaluate(ld.ema.to(rt.device), data, s, cfg.train.eval_batch_size, rt)
             if ld.ema is not None else None)
        ema = f"{e['top1']:9.2f} {e['top5']:9.2f}" if e else f"{'-':>9} {'-':>9}"
        print(f"{s:>6} {r['top1']:8.2f} {r['top5']:8.2f} {ema}")
    return 0


def eval_view(dataset: str, size: int):
    """One image (PIL) -> a (1, C, size, size) batch, seen as the run's evaluation saw its
    images: the in-memory datasets resize the whole image (augment.resize), image trees take
    the centre view (imagefolder.eval_transform)."""
    from torchvision.transforms import v2

    from .data import augment
    from .data.imagefolder import eval_transform
    if dataset in ("fashion_mnist", "synthetic"):
        return lambda img: augment.resize(v2.functional.pil_to_tensor(img)[None], size)
    tf = eval_transform(size)
    return lambda img: tf(img)[None]


def cmd_predict(args) -> int:
    from . import inference
    from .cli import EXIT_USAGE
    from .data.tree import open_rgb
    from .evaluate import normalize
    ld = inference.load(args.checkpoint)
    model, which = ld.chosen(args.no_ema)
    size = args.img_size or ld.cfg.curriculum.final_size_px
    if size % model.cfg.patch_size:
        raise ConfigError(f"--img-size {size} is not a multiple of the patch size "
                          f"{model.cfg.patch_size}")
    # (on stderr: stdout holds the predictions alone, a line an image, for scripts to read)
    print(f"predicting with {ld.describe(which)} at {size}px", file=sys.stderr)
    view = eval_view(ld.cfg.data.dataset, size)
    unreadable = 0
    for path in args.images:
        try:
            img = open_rgb(path, upright=True)
        except Exception as e:  # said, and the other images still predicted
            # A missing file or a folder: the OS's words alone, not "[Errno 2] ...: 'path'"
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            print(f"error: cannot read image {path}: {why}", file=sys.stderr)
            unreadable += 1
            continue
        if model.cfg.in_chans == 1:
            img = img.convert("L")
        x = normalize(view(img), ld.mean, ld.std)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = probs.topk(min(5, len(probs)))
        ranked = ", ".join(f"{ld.classes[i]} {100 * p:.1f}%"
                           for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {ranked}")
    return EXIT_USAGE if unreadable else 0


def cmd_export(args) -> int:
    from . import inference
    from .export import save_weights
    out = Path(args.out)
    if out.suffix != ".safetensors" or out.is_dir():  # eval / predict know it by the suffix
        raise ConfigError(f"--out {out}: give a file name for the weights ending in "
                          f".safetensors, such as model.safetensors (the model config goes "
                          f"beside it, as model.json)")
    ld = inference.load(args.checkpoint)
    model, weights = ld.chosen(args.no_ema)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # (a file where a folder of the path should be)
        raise ConfigError(f"--out {out}: cannot make its folder {out.parent} "
                          f"({e.strerror or e})") from None
    # What predict / eval need to use the weights as the run's own evaluation did.
    meta = {"weights": weights, "step": ld.step, "classes": ld.classes, "mean": list(ld.mean),
            "std": list(ld.std), "config": ld.cfg.to_dict()}
    save_weights(model, out, meta)
    print(f"wrote {out} and {out.with_suffix('.json')} ({weights} weights of step {ld.step})")
    return 0


def cmd_info(args) -> int:
    from dataclasses import replace
    from .config import model_shape
    from .curriculum import planned_sizes
    from .models import count_params, create_model, forward_flops, model_config
    from .models.registry import LOCAL, PLAIN
    from .presets import get_preset
    if args.checkpoint:  # the model a run trained (or exported), at its curriculum's sizes
        from . import inference
        if args.num_classes or args.in_chans:
            raise ConfigError("--num-classes and --in-chans are the checkpoint's own")
        ld = inference.load(args.checkpoint)
        cfg, name, source = ld.model.cfg, ld.cfg.model.name, f" ({ld.describe()})"
        default_sizes = planned_sizes(ld.cfg)
    else:
        preset = get_preset(args.preset) if args.preset else None
        grey = preset is not None and preset.data.dataset == "fashion_mnist"
        classes = args.num_classes or (10 if grey else 1000)
        chans = args.in_chans or (1 if grey else 3)
        try:  # a preset's model as it trains (its overrides: the fmnist FFN is 1x wide)
            cfg = (model_shape(preset, classes, chans) if preset else
                   model_config(args.model, num_classes=classes, in_chans=chans))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        name = preset.model.name if preset else args.model
        source = f" (preset {args.preset})" if preset else ""
        default_sizes = planned_sizes(preset) if preset else [32, 64, 96, 128, 160, 192, 224]
    sizes = args.sizes or default_sizes
    for s in sizes:
        if s % cfg.patch_size:
            raise ConfigError(f"--sizes: {s} is not a multiple of the patch size {cfg.patch_size}")
    def params(c) -> int:  # counted on the meta device: shapes only, no weights initialised
        with torch.device("meta"):
            return count_params(create_model(c))
    plain, local = (params(replace(cfg, **kind)) for kind in (PLAIN, LOCAL))
    print(f"{name}{source}: dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, patch "
          f"{cfg.patch_size}, ffn {cfg.ffn} x{cfg.mlp_ratio:g} ({cfg.act}), {cfg.num_classes} "
          f"classes, {cfg.in_chans} channel{'s' if cfg.in_chans > 1 else ''}")
    print(f"params: {params(cfg):,}  (the same shape plain: {plain:,}; "
          f"with the locality FFN: {local:,}; difference {local - plain:+,})")
    print(f"{'size':>6} {'tokens':>7} {'fwd GFLOPs':>11}")
    for s in sizes:
        tokens = (s // cfg.patch_size) ** 2 + 1
        print(f"{s:>6} {tokens:>7} {forward_flops(cfg, s) / 1e9:11.3f}")
    return 0


def cmd_speed(args) -> int:
    from .speed import run_speed
    return run_speed(args)
