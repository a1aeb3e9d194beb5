"""A training run's stdout and stderr, kept from killing it when nobody reads them any more.

Python ignores SIGPIPE, so once the reader of a pipe is gone (`budgetvit train | head`, a
`tee` or ssh session that died) the next print raises BrokenPipeError, and a hung-up terminal
gives EIO: from inside a progress line, in the middle of training, losing everything since the
last checkpoint. Guarded, the stream goes to /dev/null from then on and the run is told once,
and stops as on SIGTERM, with a checkpoint.
"""
from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager

GONE = (errno.EPIPE, errno.EIO)  # the reader closed the pipe; the terminal hung up


class GuardedStream:
    def __init__(self, stream, on_gone):
        self._stream, self._on_gone = stream, on_gone

    def _call(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError as e:
            if e.errno not in GONE:
                raise
        # Python flushes the stream again at exit: give it somewhere to write.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)
        self._on_gone()
        return len(args[0]) if args else None

    def write(self, text: str):
        return self._call("write", text)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


@contextmanager
def guarded_output(on_gone):
    """sys.stdout and sys.stderr guarded while the block runs; on_gone() is called once, at
    the first write to either that finds its reader gone."""
    told = []

    def once() -> None:
        if not told:
            told.append(True)
            on_gone()
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (GuardedStream(s, once) for s in streams)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams
