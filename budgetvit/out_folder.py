"""The folder a command writes into (train and bench --out, report --out, prepare --dst): a file
where it should be is refused in the same one line by each, naming the command's option;
mkdir's own words ("[Errno 17] File exists", "[Errno 20] Not a directory") name neither."""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError


def check_folder(path: str | Path, option: str) -> None:
    """Raise ConfigError if `path` is a file, or the deepest of its parents that exists is."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "" if p == path else f": {p}"
                raise ConfigError(f"{option} {path}{where} is a file, not a folder")
            return
