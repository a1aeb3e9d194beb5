"""One budgetvit run or bench per output folder. A second one started in a folder that a live one
is still using, say by rerunning its command in another terminal to "resume" it, would train
beside it: both write the same checkpoints and logs, and each, sharing the machine, is timed at
a fraction of its speed."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from .config import ConfigError

LOCK_NAME = ".lock"
_held: set[Path] = set()  # this process's (a record lock does not refuse its own holder)


@contextlib.contextmanager
def folder_lock(folder: Path, option: str = "--out"):
    """Hold FOLDER/.lock (created with the folder) while the block runs; raise ConfigError if
    another process, or this one, holds it. A POSIX record lock: the kernel lets go when the
    holder exits, however it ends, and processes it forks (loader workers, which outlive a
    SIGKILLed trainer by a few seconds) do not hold it. Where the folder cannot be written or
    the file system has no locks, the block runs unguarded (the run's writability check names
    the problem)."""
    key = folder.resolve()
    if key in _held:
        raise _in_use(folder, option, f"pid {os.getpid()}, this process")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    locked = False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except (BlockingIOError, PermissionError):  # (held: EAGAIN or EACCES, as the OS has it)
            raise _in_use(folder, option, os.pread(fd, 200, 0).decode(errors="replace").strip()
                          or "?") from None
        except OSError:
            pass  # no locks on this file system
        if locked:  # (the host too: on a shared file system the holder may be elsewhere)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            _held.add(key)
        yield
    finally:
        if locked:  # a finished run's folder keeps no lock file (one killed keeps it, unlocked)
            _held.discard(key)
            with contextlib.suppress(OSError):
                os.unlink(folder / LOCK_NAME)
        os.close(fd)


def _in_use(folder: Path, option: str, holder: str) -> ConfigError:
    return ConfigError(f"{option} {folder} is in use by another budgetvit run or bench "
                       f"({holder}); wait for it to end, or use another {option}")
