"""Where a run's latency log goes, so that no run ever destroys an earlier run's log.

By default every run gets its own timestamped name (``latency-20260101-120000.log``, with
``-1``, ``-2`` … added if that name is taken). A path the user names with ``--log`` must
not exist yet: it is checked before anything starts and claimed (created exclusively) only
once the run has started, so a run that fails to open the port leaves every file alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class LogPathError(OSError):
    """The chosen log path cannot be used (it exists, or its folder does not)."""


def default_log_path(directory: Path | str = ".", now_unix: float | None = None) -> Path:
    """A fresh timestamped log name in ``directory`` that no existing file has."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now_unix))
    candidate = Path(directory) / f"latency-{stamp}.log"
    n = 1
    while candidate.exists():
        candidate = Path(directory) / f"latency-{stamp}-{n}.log"
        n += 1
    return candidate


def check_log_path(path: Path | str) -> Path:
    """Refuse a path that exists (never overwrite a log silently) or whose folder is missing."""
    path = Path(path)
    if path.exists():
        raise LogPathError(f"--log {path}: already exists; robotd never overwrites a log "
                           f"(choose another path, or leave --log out for a new timestamped name)")
    if not path.parent.is_dir():
        raise LogPathError(f"--log {path}: folder {path.parent} does not exist")
    return path


def claim_log_path(path: Path | str) -> Path:
    """Create ``path`` empty and exclusively: a file that appeared since the check is kept."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise LogPathError(f"--log {path}: appeared while starting; robotd never overwrites a log") from None
    os.close(fd)
    return path
