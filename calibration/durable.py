"""Files that survive a kill or a power cut: written whole under a temporary name, then renamed.

A rename is atomic, but only a written-and-synced file is safe to rename: without the fsync a
power cut can leave the new name on an empty file. So every resume file is written with
:func:`write_synced` and put in place with :func:`replace_synced`; between the two calls the
old file is untouched, after the second the new one is whole.

It lives in the lowest layer (calibration <- sim <- policies <- robotd) because both the
calibration file's save and the learner's resume files use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def write_synced(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` with ``write(file)`` and fsync it (``path`` is a temporary name)."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def replace_synced(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and fsync the directory, so that the rename itself is on disk."""
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
