"""One budgetvit process per output folder. A second run (or bench) started in a folder that a
live one is still using, say by rerunning its command in another terminal to "resume" it,
would train beside it: both write the same checkpoints and logs, and each, sharing the
machine, is timed at a fraction of its speed."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from .config import ConfigError

LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: Path, option: str = "--out"):
    """Hold FOLDER/.lock (created with the folder) while the block runs; raise ConfigError if
    another process holds it. A POSIX record lock: the kernel lets go when the holder exits,
    however it ends, and processes it forks (loader workers, which outlive a SIGKILLed trainer
    by a few seconds) do not hold it. Where the folder cannot be written or the file system
    has no locks, the block runs unguarded (the run's writability check names the problem)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # (held: EAGAIN or EACCES, as the OS has it)
            holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"{option} {folder} is in use by another budgetvit process (pid "
                              f"{holder}); wait for it to end, or use another {option}") from None
        except OSError:
            pass  # no locks on this file system
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
