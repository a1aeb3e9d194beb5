"""Batched augmentation on tensors, for data that lives in memory (or on the GPU) as a whole.

Per-image decoders (ImageFolder) use torchvision.transforms.v2 per image instead; these
functions exist because v2 transforms applied to a batch draw one set of parameters for the
whole batch, while training wants every image cropped and erased differently.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resized_crop_flip(x: torch.Tensor, size: int, scale_min: float, hflip: bool,
                      u: torch.Tensor) -> torch.Tensor:
    """Random-resized-crop and random horizontal flip, every image with its own parameters, to
    a (size x size) output.

    x: (B, C, H, W) uint8 or float in [0, 1]; u: (B, 5) uniform draws in [0, 1), one row per
    image (drawn by the caller so that an image's crop does not depend on how the batch is
    split across processes). Returns float (B, C, size, size) in [0, 1].
    The crop draws an area share a ~ U(scale_min, 1) and a ratio r ~ log-U(3/4, 4/3), takes
    sides sqrt(a r) x sqrt(a / r) of the image's width x height, and clamps a side longer than
    the image to it. Unlike torchvision (which redraws, then falls back to the whole image), the
    kept area then falls below a, to 86.6% of it at worst, and the crop is not of ratio r. So
    scale_min=1 is not "no crop": every image with r != 1 loses up to 13.4% of one side
    (the fmnist preset was tuned with this). One affine grid_sample does crop, flip and resize.
    """
    B = x.shape[0]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    dev = x.device
    u = u.to(dev, non_blocking=True)  # a blocking copy would wait for the GPU's queue
    area = scale_min + (1.0 - scale_min) * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a share of the image width
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1.0 - w) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] grid coordinates
    cy = (1.0 - h) * (2 * u[:, 3] - 1)
    flip = torch.where((u[:, 4] < 0.5) & hflip, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [B, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic resize for evaluation: (B, C, H, W) -> float (B, C, size, size) in [0, 1]."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp_(0, 1)


def random_erasing(x: torch.Tensor, prob: float, tries: int = 10) -> torch.Tensor:
    """Per-image random erasing with N(0, 1) noise, as DeiT/timm apply it to normalised images,
    with timm's draw made for the whole batch at once: area 2%-33% of the image, log-uniform
    aspect 0.3-3.3, height and width rounded to whole pixels, the first of `tries` draws that
    fits inside the image (none fits: nothing erased), the corner uniform over every place it
    fits. x: (B, C, H, W) float, normalised."""
    if prob <= 0:
        return x
    B, _, H, W = x.shape
    u = torch.rand(B, 2 * tries + 3, device=x.device)
    area = (0.02 + (1 / 3 - 0.02) * u[:, :tries]) * H * W  # (B, tries)
    ratio = (math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * u[:, tries:2 * tries]).exp()
    h = (area * ratio).sqrt().round()
    w = (area / ratio).sqrt().round()
    fits = (h < H) & (w < W)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first draw that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)  # (B,)
    top = ((H - h + 1) * u[:, -3]).floor()  # uniform over 0..H-h
    left = ((W - w + 1) * u[:, -2]).floor()
    erase = fits.any(dim=1) & (u[:, -1] < prob)
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    mask = ((rows >= top.view(B, 1, 1)) & (rows < (top + h).view(B, 1, 1))
            & (cols >= left.view(B, 1, 1)) & (cols < (left + w).view(B, 1, 1))
            & erase.view(B, 1, 1))  # (B, H, W)
    return torch.where(mask.unsqueeze(1), torch.randn_like(x), x)


def randaugment(x: torch.Tensor, ops: int, magnitude: int, u: torch.Tensor) -> torch.Tensor:
    """torchvision's RandAugment with every image's own ops, in one call per (op, sign) drawn
    (at most 24 per round) instead of one per image, and never waiting for a GPU: torchvision
    builds its affine matrices and its sharpness kernel with torch.tensor(..., device=...), a
    host-device sync each (44 in a step of 1024 at 2 ops), so the geometric ops and sharpness
    are computed here, with the matrices made on the CPU and copied without waiting. The rest
    are torchvision's ops, and its op table and matrix formula (private names of v2.RandAugment
    and its functional module, stable since torchvision 0.16).

    x: (B, C, H, W) uint8 on any device. u: (B, 2 * ops) uniform draws in [0, 1) on the CPU,
    drawn by the caller like resized_crop_flip's: for round r, u[:, 2r] picks the op and
    u[:, 2r + 1] < 0.5 negates a signed magnitude. Every op acts on each image alone, so an
    image's result is exactly what RandAugment gives it when it draws the same ops.
    """
    if ops <= 0:
        return x
    from torchvision.transforms import v2
    H, W = x.shape[-2:]
    ra = v2.RandAugment(num_ops=ops, magnitude=magnitude)
    table = []  # (name, magnitude, signed) of torchvision's ops, in its order
    for name, (magnitudes, signed) in ra._AUGMENTATION_SPACE.items():
        bins = magnitudes(ra.num_magnitude_bins, H, W)
        table.append((name, 0.0 if bins is None else float(bins[magnitude]), signed))
    x = x.clone()
    for r in range(ops):
        choice = (u[:, 2 * r] * len(table)).long().clamp(max=len(table) - 1)
        negative = u[:, 2 * r + 1] < 0.5
        for k, (name, m, signed) in enumerate(table):
            for sign in ((1.0, -1.0) if signed else (1.0,)):
                picked = (choice == k) & (negative == (sign < 0)) if signed else choice == k
                rows = picked.nonzero().flatten()  # on the CPU: no sync
                matrix = inverse_affine(name, sign * m, H, W) if name in GEOMETRIC else None
                if name == "Identity" or len(rows) == 0 or matrix == IDENTITY:
                    continue
                rows = rows.to(x.device, non_blocking=True)
                if matrix is not None:
                    out = affine_nearest(x[rows], matrix)
                elif name == "Sharpness":
                    out = sharpen(x[rows], 1.0 + sign * m)
                else:
                    out = ra._apply_image_or_video_transform(x[rows], name, sign * m,
                                                             interpolation=ra.interpolation,
                                                             fill=ra._fill)
                x.index_copy_(0, rows, out)
    return x


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def inverse_affine(name: str, m: float, H: int, W: int) -> list[float]:
    """The inverse matrix (output pixel -> input pixel, origin at the image centre) torchvision's
    RandAugment uses for geometric op `name` at signed magnitude m, from torchvision's own
    formula and arguments, so that the result is bit-identical to its per-image call. A rotation
    by 0 degrees is IDENTITY (torchvision returns a copy for it)."""
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix
    if name == "Rotate":
        angle = m % 360  # as torchvision's rotate normalises it; 30 degrees at most here
        return IDENTITY if angle == 0 else _get_inverse_affine_matrix(
            [0.0, 0.0], -angle, [0.0, 0.0], 1.0, [0.0, 0.0])
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(m))
        return _get_inverse_affine_matrix([-0.5 * W, -0.5 * H], 0.0, [0.0, 0.0], 1.0,
                                          [shear, 0.0] if name == "ShearX" else [0.0, shear])
    translate = [float(int(m)), 0.0] if name == "TranslateX" else [0.0, float(int(m))]
    return _get_inverse_affine_matrix([0.0, 0.0], 0.0, translate, 1.0, [0.0, 0.0])


def affine_nearest(x: torch.Tensor, matrix: list[float]) -> torch.Tensor:
    """Resample the images x (uint8 (n, C, H, W)) through one inverse affine matrix, nearest
    pixel, zeros outside, with torchvision's grid convention (pixel centres at integer offsets
    from the image centre, then scaled to [-1, 1]), so that each image matches torchvision's
    affine / rotate of it. The matrix goes to the device without the host waiting."""
    n, C, H, W = x.shape
    dev = x.device
    to_unit = torch.tensor(matrix).view(2, 3).T / torch.tensor([0.5 * W, 0.5 * H])  # (3, 2)
    cols = torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, W, device=dev)
    rows = torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, H, device=dev)
    pixels = torch.stack([cols.expand(H, W), rows[:, None].expand(H, W),
                          torch.ones(H, W, device=dev)], dim=-1).view(1, H * W, 3)
    # bmm with a batch of one, as torchvision: another product kernel could round the last
    # bit differently and move a pixel lying on a half-pixel boundary.
    grid = pixels.bmm(to_unit.to(dev, non_blocking=True)[None]).view(1, H, W, 2)
    grid = grid.expand(n, H, W, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.round_().to(torch.uint8)


def sharpen(x: torch.Tensor, factor: float) -> torch.Tensor:
    """RandAugment's Sharpness on uint8 (n, C, H, W), as torchvision defines it after PIL: blend
    each image with its 3x3 smoothing (weight 5 at the centre, 1 around, over 13; rounded) at
    `factor` (>1 sharpens), the one-pixel border kept. The kernel is filled on the device."""
    C, H, W = x.shape[1:]
    if H <= 2 or W <= 2:  # all border: torchvision returns such an image unchanged
        return x.clone()
    kernel = torch.full((C, 1, 3, 3), 1.0 / 13.0, device=x.device)
    kernel[:, :, 1, 1] = 5.0 / 13.0
    out = x.float()
    smooth = F.conv2d(out, kernel, groups=C).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.add_(smooth.sub_(inner), alpha=1.0 - factor)  # = factor * inner + (1 - factor) * smooth
    return out.clamp_(0, 255).to(torch.uint8)


def mixup_cutmix(mixup: float, cutmix: float, num_classes: int):
    """torchvision's batch MixUp / CutMix (one of them per batch when both are on), or None.
    Returns a callable (x, y) -> (x, soft targets (B, num_classes))."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from torchvision.transforms import v2
    ops = []
    if mixup > 0:
        ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
