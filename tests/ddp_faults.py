"""`python -m tests.ddp_faults train ...`: budgetvit's CLI with faults that only a run of several
processes shows, each on rank 1 only, switched on by environment variables
(test_distributed.py):

- FAULT_CLOCK_SKEW_S: rank 1's own clock reads this many seconds late (ranks' clocks drift);
- FAULT_OVERFLOW_STEP: rank 1's loss is infinite at this step, as one rank's fp16 forward can
  overflow alone;
- FAULT_LATE_SIGTERM=1: rank 1 gets SIGTERM as its clock stops at the end of the budget, after
  the ranks' last shared decision;
- FAULT_UNREADABLE=NAME: rank 1 cannot read the checkpoint file NAME (a network disk's fault
  on one node).

With none of them it is the plain CLI, but for two things: on SIGUSR1 every rank prints its
threads' stacks (what test_distributed.finish shows of a job that hangs), and each rank says
whether its DDP wrapper was freed before the process group was destroyed (see train.train).
"""
import faulthandler
import math
import os
import signal
import sys
import weakref

import torch

from budgetvit import budget, distributed, train
from budgetvit.cli import main

RANK1 = os.environ.get("RANK") == "1"
SKEW = float(os.environ.get("FAULT_CLOCK_SKEW_S", "0"))
OVERFLOW_STEP = int(os.environ.get("FAULT_OVERFLOW_STEP", "0"))
faulthandler.register(signal.SIGUSR1, all_threads=True)


def patch(cls, name, wrapper):
    real = getattr(cls, name)
    setattr(cls, name, lambda self, *a: wrapper(self, real, *a))


if RANK1 and SKEW:
    patch(budget.BudgetClock, "read", lambda clock, real: real(clock) + SKEW)
if RANK1 and OVERFLOW_STEP:
    patch(train.Trainer, "loss_fn", lambda trainer, real, logits, y: real(trainer, logits, y)
          * (math.inf if trainer.clock.steps + 1 == OVERFLOW_STEP else 1.0))
if RANK1 and os.environ.get("FAULT_LATE_SIGTERM"):
    def stop(clock, real):
        if clock._since is not None and clock.progress(clock.read()) >= 1.0:  # (step budget)
            os.kill(os.getpid(), signal.SIGTERM)
        real(clock)
    patch(budget.BudgetClock, "stop", stop)

if RANK1 and os.environ.get("FAULT_UNREADABLE"):
    real_load = torch.load

    def load(path, *a, **k):
        if os.path.basename(path) == os.environ["FAULT_UNREADABLE"]:
            raise MemoryError()
        return real_load(path, *a, **k)
    torch.load = load

wrappers = []  # weak references to the DDP wrappers made
real_ddp, real_shutdown = torch.nn.parallel.DistributedDataParallel, distributed.shutdown


class TrackedDDP(real_ddp):  # a subclass: isinstance checks (dynamo's) still hold
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wrappers.append(weakref.ref(self))


def reporting_shutdown(d):
    print(f"rank {d.rank}: DDP freed before its process group: "
          f"{bool(wrappers) and all(w() is None for w in wrappers)}", flush=True)
    real_shutdown(d)


torch.nn.parallel.DistributedDataParallel = TrackedDDP
distributed.shutdown = reporting_shutdown

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
