"""Top-1 / top-5 accuracy on the evaluation split at a given image size, sharded over ranks."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .config import ConfigError
from .distributed import Dist, all_sum


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 or [0, 1] float (B, C, H, W) -> normalised float32."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    # Made on the host and copied without blocking: torch.tensor(..., device="cuda") waits
    # for the GPU's queue to drain, a host-device sync in every training step.
    m, s = torch.tensor([mean, std]).view(2, 1, -1, 1, 1).to(x.device, non_blocking=True)
    return (x - m) / s


def evaluate(model, data, size: int, batch_size: int, runtime, d: Dist = Dist()) -> dict:
    """{'top1', 'top5' (percent), 'loss', 'images'} of `model` at `size` px. Every image of
    the split is seen exactly once across ranks; counts are summed over ranks."""
    # Eager, even where training compiled the model's blocks in place: every evaluation shape
    # (batch size, eval mode, size) would otherwise be compiled anew. Only where a run
    # compiles: set_stance imports torch._dynamo, 2 s at the start of every command.
    with (torch.compiler.set_stance("force_eager") if runtime.compile else
          contextlib.nullcontext()):
        return _evaluate(model, data, size, batch_size, runtime, d)


@torch.no_grad()
def _evaluate(model, data, size: int, batch_size: int, runtime, d: Dist) -> dict:
    was_training = model.training
    model.eval()
    # Summed on the device (no sync per batch): correct top-1, correct top-5, loss, images.
    totals = torch.zeros(4, dtype=torch.float64, device=runtime.device)
    for x, y in data.eval_batches(size, batch_size, d.rank, d.world):
        with runtime.autocast():
            logits = model(normalize(x, data.mean, data.std)).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        totals[0] += (top[:, 0] == y).sum()
        totals[1] += (top == y[:, None]).any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, y, reduction="sum")
        totals[3] += len(y)
    model.train(was_training)
    # (image trees and caches count the unreadable images they left out; in memory, none)
    left_out = getattr(data, "left_out", 0)
    correct1, correct5, loss_sum, n, left_out = all_sum(totals.tolist() + [left_out], d,
                                                        runtime.device)
    if n == 0:  # every image unreadable (left out): no score to give
        raise ConfigError(f"no readable image in the evaluation split ({data.eval_split})")
    if left_out and d.main:  # said once, by rank 0, with the count over all ranks
        data.warn_left_out(int(left_out))
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n,
            "images": int(n)}
