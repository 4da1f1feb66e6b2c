"""Read, modify and safely rewrite a calibration TOML (used by ``robotd calibrate``).

Pure file handling, no hardware: the procedures in ``robotd.calibrate`` measure, these
helpers write. A save

1. serialises the document with ``tomli_w`` (the structure the loader accepts: the same
   tables, ``[[joints]]`` array and key names), puts short number arrays back on one line
   and carries the original file's comments over to the same table/key;
2. re-parses the text and validates it with :func:`calibration.parse_calibration` — an
   invalid result raises :class:`~calibration.CalibrationError` and nothing is touched;
3. copies the previous file to ``<name>.bak-<YYYYmmdd-HHMMSS>`` (never overwriting an older
   backup);
4. writes a temporary file in the same directory, fsyncs it and ``os.replace``-s it over the
   original, so a crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import tomli_w

from calibration.description import CalibrationError, parse_calibration
from calibration.durable import replace_synced

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Document = dict[str, Any]


@dataclass(frozen=True)
class SaveResult:
    path: Path
    backup_path: Path | None


def read_document(path: Path | str) -> tuple[Document, str]:
    """The parsed TOML document and its text (for carrying comments over on save)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(path, "<file>", f"cannot read: {exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(path, "<toml>", f"not valid TOML: {exc}") from None


# ----------------------------------------------------------------------------- edits


def _joint_table(doc: Document, name: str) -> dict[str, Any]:
    for table in doc.get("joints", []):
        if isinstance(table, dict) and table.get("name") == name:
            return table
    raise KeyError(f"no [[joints]] entry named {name!r}")


def with_joint(doc: Document, name: str, *, neutral_us: float | None = None, direction: int | None = None,
               min_us: float | None = None, max_us: float | None = None) -> Document:
    """A copy of ``doc`` with one joint's centre/direction/limits replaced (pulses as whole us)."""
    doc = copy.deepcopy(doc)
    table = _joint_table(doc, name)
    for key, value in (("neutral_us", neutral_us), ("min_us", min_us), ("max_us", max_us)):
        if value is not None:
            table[key] = int(round(value))
    if direction is not None:
        table["direction"] = int(direction)
    return doc


def with_imu(doc: Document, phone_to_torso: Sequence[Sequence[float]] | None = None,
             gyro_bias_rad_s: Sequence[float] | None = None) -> Document:
    """A copy of ``doc`` with the phone mount and/or gyro bias replaced."""
    doc = copy.deepcopy(doc)
    imu = doc.setdefault("imu", {})
    if phone_to_torso is not None:
        imu["phone_to_torso"] = [[_clean(v, 9) for v in row] for row in phone_to_torso]
    if gyro_bias_rad_s is not None:
        imu["gyro_bias_rad_s"] = [_clean(v, 6) for v in gyro_bias_rad_s]
    return doc


def with_servo_timing(doc: Document, dead_time_ms: float, response_ms: float) -> Document:
    """A copy of ``doc`` with ``[servo_timing]`` replaced (0.1 ms resolution)."""
    doc = copy.deepcopy(doc)
    timing = doc.setdefault("servo_timing", {})
    timing["dead_time_ms"] = _clean(dead_time_ms, 1)
    timing["response_ms"] = _clean(response_ms, 1)
    return doc


def _clean(value: float, digits: int) -> float:
    value = round(float(value), digits)
    return 0.0 if value == 0 else value  # no "-0.0" in the file


# ----------------------------------------------------------------------------- writing


def dumps(doc: Document, original_text: str | None = None) -> str:
    """TOML text for ``doc``: tomli_w, number arrays on one line, comments from ``original_text``."""
    text = _collapse_arrays(tomli_w.dumps(doc))
    if original_text:
        text = _carry_comments(original_text, text)
    return text


def save_document(path: Path | str, doc: Document, *, original_text: str | None = None,
                  backup: bool = True, stamp: str | None = None) -> SaveResult:
    """Validate ``doc`` and replace ``path`` with it atomically, keeping a backup of the old file.

    Raises :class:`CalibrationError` (file untouched) if the result does not load.
    """
    path = Path(path)
    text = dumps(doc, original_text)
    reparsed = tomllib.loads(text)
    if reparsed != doc:  # the writer must never change a value
        raise CalibrationError(path, "<toml>", "serialised document does not read back identically")
    parse_calibration(reparsed, path)  # raises CalibrationError naming the key
    backup_path = _backup(path, stamp) if backup and path.exists() else None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp_name)
        replace_synced(Path(tmp_name), path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return SaveResult(path, backup_path)


def _backup(path: Path, stamp: str | None) -> Path:
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    shutil.copy2(path, candidate)
    return candidate


_FLAT_ARRAY = re.compile(r"\[\n((?:[ \t]+[^\[\]\n]+,\n)+)[ \t]*\]")
#: An array whose items are one-line arrays of scalars (a matrix such as ``phone_to_torso``).
_MATRIX = re.compile(r"\[\n((?:[ \t]+\[[^\[\]\n]*\],\n)+)[ \t]*\]")


def _collapse_arrays(text: str) -> str:
    """tomli_w writes every array one item per line; put arrays of scalars, and arrays of
    those (the 3x3 mount matrix), back on one line as the template writes them."""
    def one_line(m: re.Match[str]) -> str:
        return "[" + ", ".join(item.strip().rstrip(",") for item in m.group(1).splitlines()) + "]"

    for pattern in (_FLAT_ARRAY, _MATRIX):
        while True:
            new = pattern.sub(one_line, text)
            if new == text:
                break
            text = new
    return text


def _anchors(lines: Iterable[str]) -> Iterable[tuple[int, tuple[Any, ...] | None]]:
    """(line index, anchor) for every content line: its table (with occurrence) and key."""
    header: tuple[str, int] = ("", 0)
    seen: dict[str, int] = {}
    depth = 0  # inside a multi-line array: continuation lines are not keys
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if depth == 0 and stripped.startswith("["):
            name = stripped.split("#", 1)[0].strip()
            seen[name] = seen.get(name, 0) + 1
            header = (name, seen[name])
            yield i, ("table", *header)
            continue
        if depth == 0 and "=" in stripped:
            yield i, ("key", *header, stripped.split("=", 1)[0].strip())
        else:
            yield i, None
        depth += stripped.count("[") - stripped.count("]")
        depth = max(depth, 0)


def _carry_comments(original: str, new: str) -> str:
    """Re-insert the original's comment lines before the same table or key in ``new``."""
    old_lines = original.splitlines()
    blocks: dict[tuple[Any, ...], list[str]] = {}
    previous = -1
    for i, anchor in _anchors(old_lines):
        chunk = old_lines[previous + 1:i]
        previous = i
        if anchor is None or not any(line.strip().startswith("#") for line in chunk):
            continue
        while chunk and not chunk[0].strip():
            chunk = chunk[1:]
        blocks[anchor] = chunk
    tail = old_lines[previous + 1:]
    new_lines = new.splitlines()
    out: list[str] = []
    insert_at = {i: blocks[a] for i, a in _anchors(new_lines) if a is not None and a in blocks}
    for i, line in enumerate(new_lines):
        out.extend(insert_at.get(i, ()))
        out.append(line)
    if any(line.strip().startswith("#") for line in tail):
        out.extend(tail)
    return "\n".join(out) + "\n"
