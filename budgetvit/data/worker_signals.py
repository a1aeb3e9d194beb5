"""Loader workers leave stopping to the trainer.

Ctrl-C and a closed terminal signal every process of the terminal's group (SIGINT, SIGHUP);
Slurm at a time limit or preemption, and `kill -- -PGID`, send SIGTERM to every process of the
job. A DataLoader worker would react on its own: SIGINT and SIGHUP run the handler inherited
from the trainer, which outside the training loop raises (a traceback per worker); SIGTERM from
anyone but the worker's parent kills it (PyTorch's worker handler). Either way the trainer then
fails on a dead worker instead of finishing its step, writing its checkpoint and saying how to
resume. So a worker ignores these signals, except the SIGTERM of the trainer itself, which is
how the trainer (DataLoader shutdown, multiprocessing at exit) ends workers that have not
stopped by themselves: ignored, that one would hang the trainer's exit.
"""
from __future__ import annotations

import functools
import os
import signal
import threading


def leave_stops_to(trainer_pid: int):
    """A DataLoader worker_init_fn for workers of the process trainer_pid (the parent of fork
    workers, not of forkserver ones, hence given rather than read in the worker)."""
    return functools.partial(_leave_stops_to, trainer_pid)


def _leave_stops_to(trainer_pid: int, worker_id: int) -> None:
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    # Python handlers do not see who sent a signal: SIGTERM is blocked in this thread (and the
    # threads it starts later) and taken by one that waits for it and reads the sender.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(trainer_pid,), daemon=True,
                     name="sigterm from the trainer").start()


def _exit_on_sigterm_from(trainer_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer_pid:
        pass
    os._exit(0)  # as PyTorch's handler does: the trainer has no use for the worker any more
