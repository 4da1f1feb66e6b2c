"""Where a run's latency log goes, so that no run ever destroys an earlier run's log.

By default every run gets its own timestamped name (``latency-20260101-120000.log``, with
``-1``, ``-2`` … added if that name is taken). A path the user names with ``--log`` must
not exist yet: it is checked before anything starts and claimed (created exclusively) only
once the run has started, so a run that fails to open the port leaves every file alone.

A log that may rotate (``--log-max-mb``) continues in numbered files (``run.1.log.zst`` ...,
:func:`robotd.logs.log_files.segment_path`); a file that already has such a name makes the path
refused too (and is skipped by the default name), and the writer creates each later segment
exclusively, so rotation never overwrites a file either. ``--log NAME.zst`` (and the default
with ``suffix=".log.zst"``) gives a compressed log under the same rules.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from robotd.logs.log_files import segment_index, segment_path


class LogPathError(OSError):
    """The chosen log path cannot be used (it exists, or its folder does not)."""


def existing_segments(path: Path | str) -> list[Path]:
    """``path`` and the files already named as its rotated segments (``run.3.log`` for ``run.log``)."""
    path = Path(path)
    found = [path] if path.exists() else []
    if path.parent.is_dir():
        found += sorted(p for p in path.parent.iterdir()
                        if (k := segment_index(p)) > 0 and segment_path(path, k) == p)
    return found


def default_log_path(directory: Path | str = ".", now_unix: float | None = None, suffix: str = ".log") -> Path:
    """A fresh timestamped log name in ``directory`` that no existing file (nor segment) has."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now_unix))
    candidate = Path(directory) / f"latency-{stamp}{suffix}"
    n = 1
    while existing_segments(candidate):
        candidate = Path(directory) / f"latency-{stamp}-{n}{suffix}"
        n += 1
    return candidate


def check_log_path(path: Path | str, rotating: bool = False) -> Path:
    """Refuse a path that exists (never overwrite a log silently) or whose folder is missing; a log
    that may rotate is refused too if a file already has one of its segments' names."""
    path = Path(path)
    if not path.parent.is_dir():
        raise LogPathError(f"--log {path}: folder {path.parent} does not exist")
    taken = existing_segments(path) if rotating else [path] if path.exists() else []
    if taken:
        what = "already exists" if taken[0] == path else f"its rotated segment {taken[0]} already exists"
        raise LogPathError(f"--log {path}: {what}; robotd never overwrites a log "
                           f"(choose another path, or leave --log out for a new timestamped name)")
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
