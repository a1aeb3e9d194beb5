"""Atomic, complete checkpoints in RUN_DIR/checkpoints/step_XXXXXXXX.pt.

A write goes to a temporary file in the same folder, is fsynced, then os.replace'd into its
final name and the folder fsynced: a process killed mid-write leaves the previous checkpoint
untouched. Loading uses torch.load(weights_only=True), which refuses pickled code.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .config import CheckpointError

PATTERN = re.compile(r"step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.search(p.name))


def path_of(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def step_of(path: Path) -> int:
    return int(PATTERN.search(path.name).group(1))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(state: dict, run_dir: str | Path, step: int, keep: int) -> Path:
    """Write state atomically as the checkpoint of `step`, then delete all but the newest
    `keep` up to it. Raises OSError (disk full, permissions) with the previous checkpoints
    intact."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step_*.tmp*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    final = path_of(run_dir, step)
    tmp = folder / f".{final.name}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
    # Checkpoints of later steps are ones a rollback could not read and went back past (a
    # resume sets them aside): not counted among the `keep`, nor deleted.
    for old in [p for p in list_checkpoints(run_dir) if step_of(p) <= step][:-keep]:
        old.unlink(missing_ok=True)
    return final


def load(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely; a pickle that would run code, or a damaged file, is refused
    with a CheckpointError naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied") from None
    except Exception as e:
        # Text, images, JSON...: torch's error for them can be anything (a KeyError of a byte).
        if not _starts_as_torch_save(path):
            raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch "
                                  f"checkpoint") from None
        if "weights_only" in str(e):  # torch's message for whatever its safe loader refuses
            raise CheckpointError(f"refusing to load {path}: it contains pickled objects other "
                                  f"than tensors and plain data (would run code)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None


def _starts_as_torch_save(path: str | Path) -> bool:
    """Whether a file starts as torch.save writes: a zip file (the format since PyTorch 1.6)
    or a pickle (protocol 2 and later: an older format, or a bare pickle)."""
    with open(path, "rb") as f:
        return f.read(2) in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def newest_loadable(run_dir: str | Path, warn=print) -> tuple[Path, dict] | None:
    """(path, state) of the newest checkpoint of a run that loads; damaged newer ones are
    reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load(path)
        except CheckpointError as e:
            warn(f"warning: {e}; trying an older checkpoint")
    return None


def load_latest(run_dir: str | Path, warn=print) -> dict | None:
    """The state of newest_loadable(run_dir), or None."""
    found = newest_loadable(run_dir, warn)
    return found[1] if found else None


def resume_state(run_dir: str | Path, warn=print) -> dict | None:
    """The state of the newest checkpoint that loads, for a run to go on from (None: a run
    with no checkpoint). Newer ones that do not load are renamed NAME.unreadable: out of the
    `keep` rotation (once passed, they would take the slots of readable ones) and of later
    resumes, but kept, since the read may have failed for a passing reason (memory, a network
    disk). If none loads the run is not started over: that is for the user to decide."""
    paths, found = list_checkpoints(run_dir), newest_loadable(run_dir, warn)
    if found is None:
        if paths:
            raise CheckpointError(
                f"no checkpoint in {checkpoint_dir(run_dir)} reads (see the warnings above); "
                f"rerun if the cause may pass, or move them away to start the run over")
        return None
    for path in paths:
        if step_of(path) > step_of(found[0]):
            path.rename(path.with_name(path.name + ".unreadable"))
    return found[1]
