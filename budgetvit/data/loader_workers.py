"""How DataLoader workers are started: forked, and leaving stopping to the trainer.

Ctrl-C and a closed terminal signal every process of the terminal's group (SIGINT, SIGHUP);
Slurm at a time limit or preemption, and `kill -- -PGID`, send SIGTERM to every process of the
job. A DataLoader worker would react on its own: SIGINT and SIGHUP run the handler inherited
from the trainer, which outside the training loop raises (a traceback per worker); SIGTERM from
anyone but the worker's parent kills it (PyTorch's worker handler). Either way the trainer then
fails on a dead worker instead of finishing its step, writing its checkpoint and saying how to
resume. So a worker ignores these signals, except the SIGTERM of the trainer itself, which is
how the trainer (DataLoader shutdown, multiprocessing at exit) ends workers that have not
stopped by themselves: ignored, that one would hang the trainer's exit. Workers are forked
with these signals blocked (`started`), so that one sent before their worker_init_fn runs
waits for it (and is then dropped, or taken as the trainer's) rather than killing them.
"""
from __future__ import annotations

import functools
import os
import signal
import threading


# Linux: a thread can wait for SIGTERM and learn its sender (macOS has no sigwaitinfo, and
# there workers keep PyTorch's handling). Forked workers start at once and with the trainer's
# signal mask. Spawned ones, and forkserver's (Python 3.14's default), take the mask of a
# fresh process and seconds to (re-)import what they run, at every size change and evaluation.
SENDER_KNOWN = hasattr(signal, "sigwaitinfo")
START_METHOD = "fork" if SENDER_KNOWN else None
IGNORED = {signal.SIGINT, signal.SIGHUP}


def worker_settings(workers: int) -> dict:
    """DataLoader arguments for `workers` worker processes of this process, which leave
    stopping to it (start them with `started`)."""
    if not workers:
        return {"num_workers": 0}  # (DataLoader refuses a start method without workers)
    return {"num_workers": workers, "multiprocessing_context": START_METHOD,
            "worker_init_fn": functools.partial(_leave_stops_to, os.getpid())}


def started(loader):
    """iter(loader), which starts its workers, with the stop signals blocked meanwhile: forked,
    they take this thread's signal mask and keep them blocked until their worker_init_fn takes
    over (a SIGINT there would run the trainer's handler, which can raise)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:  # (blocking can run a pending handler, which may raise: inside the try)
        signal.pthread_sigmask(signal.SIG_BLOCK, IGNORED | ({signal.SIGTERM} if SENDER_KNOWN
                                                             else set()))
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _leave_stops_to(trainer_pid: int, worker_id: int) -> None:
    for s in IGNORED:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, IGNORED)  # (one sent meanwhile is dropped)
    if SENDER_KNOWN:
        # Python handlers do not see who sent a signal: SIGTERM stays blocked in this thread
        # (as forked; and in the threads and programs it starts) and is taken by a thread that
        # reads the sender.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from, args=(trainer_pid,), daemon=True,
                         name="sigterm from the trainer").start()


def _exit_on_sigterm_from(trainer_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer_pid:
        pass
    os._exit(0)  # as PyTorch's handler does: the trainer has no use for the worker any more
