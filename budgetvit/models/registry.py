"""Named model shapes. Each shape exists plain (`vit_s16`) and with the locality FFN
(`vit_s16_local`); any ViTConfig field can be overridden when the model is created."""
from __future__ import annotations

from dataclasses import fields, replace

from .vit import ViTConfig, VisionTransformer

# name: (dim, depth, heads, patch_size, base_img_size)
SHAPES = {
    "vit_ti16": (192, 12, 3, 16, 224),
    "vit_s16": (384, 12, 6, 16, 224),
    "vit_b16": (768, 12, 12, 16, 224),
    # Small shapes for 28-64 px images (Fashion-MNIST, CPU work).
    "vit_nano4": (128, 6, 4, 4, 28),
    "vit_micro4": (96, 4, 3, 4, 28),
    "vit_ti4": (192, 9, 3, 4, 32),
    "vit_nano2": (128, 6, 4, 2, 28),
}

# What "_local" means, as in the paper's released code: depthwise-conv FFN, h-swish, no biases.
LOCAL = dict(ffn="local", act="hswish", ffn_bias=False)
PLAIN = dict(ffn="mlp", act="gelu", ffn_bias=True)


def model_names() -> list[str]:
    return sorted([*SHAPES, *(n + "_local" for n in SHAPES)])


def model_config(name: str, **overrides) -> ViTConfig:
    """The ViTConfig of a named model, with any fields overridden."""
    base, local = (name[:-6], True) if name.endswith("_local") else (name, False)
    if base not in SHAPES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    dim, depth, heads, patch, img = SHAPES[base]
    cfg = ViTConfig(dim=dim, depth=depth, heads=heads, patch_size=patch, base_img_size=img,
                    **(LOCAL if local else PLAIN))
    known = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model field(s) {unknown}; allowed: {sorted(known)}")
    return replace(cfg, **overrides)


def create_model(name_or_cfg: str | ViTConfig, **overrides) -> VisionTransformer:
    cfg = name_or_cfg if isinstance(name_or_cfg, ViTConfig) else model_config(name_or_cfg)
    return VisionTransformer(replace(cfg, **overrides))
