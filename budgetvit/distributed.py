"""torchrun integration: process-group setup from the environment and the few collectives
the trainer needs. Without torchrun everything here degrades to a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def is_main_process() -> bool:
    """Whether this process runs alone or is rank 0 of its torchrun job, as init() reads it
    (before the group is joined)."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1 or int(os.environ["RANK"]) == 0


def init(device_kind: str, timeout_s: float = 300.0) -> Dist:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank)


def broadcast_floats(values: list[float], d: Dist, device) -> list[float]:
    """Rank 0's values on every rank (the clock and stop decisions are rank 0's)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def all_sum(values: list[float], d: Dist, device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_min(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The elementwise minimum over ranks (in place, on the tensor's device)."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def gather_to_main(obj, d: Dist) -> list | None:
    """Every rank's `obj` in rank order on rank 0; None elsewhere and without torchrun."""
    if not d.enabled:
        return None
    out = [None] * d.world if d.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
