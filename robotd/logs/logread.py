"""Tolerant, fast reader for the JSON Lines latency log (schema in ``docs/latency-log.md``).

The log is what is left after a run, often after a crash or a pulled cable, so the reader
keeps everything it can: a truncated last line and garbage lines are skipped and reported
in :attr:`LogData.warnings`; only a missing file, a file that is not a latency log, or a
schema newer than this reader stops it (:class:`LogError`).

Plain and zstd-compressed logs read alike, and a rotated log (``run.log.zst``,
``run.1.log.zst`` ...) reads as one run (files: :mod:`robotd.logs.log_files`); line numbers in
warnings count the run's lines across its files.

An hour at 50 Hz is 180 000 loop lines of 1-2 kB. Holding them as dicts would cost
gigabytes, so loop lines become numpy columns at once. The bulky per-tick fields only a
re-run needs (``action``, ``reset_action``, ``targets_rad``, ``pulses_us``, ``rx``) are not kept:
each loop line's place is (file, zstd frame, byte offset), and :meth:`LogData.raw_ticks`
re-reads just the lines asked for.
Decoding (stdlib ``json.loads``, one call per line) is where the time goes; see
``bench/replay_speed.py`` and ``docs/replay.md`` for the numbers.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from robotd.logs.log_files import ZSTD_MAGIC, FrameScan, iter_zstd_frames, read_zstd_frame, segment_paths

SUPPORTED_SCHEMA = 1
STAGES: tuple[str, ...] = ("parse", "fuse", "policy", "safety", "encode", "write")
"""The ``stages_us`` keys of a loop line, in pipeline order."""

_MAX_LISTED_LINES = 10  # line numbers quoted in one warning


class LogError(Exception):
    """The file cannot be read as a latency log at all; the message names the file and why."""


@dataclass(frozen=True)
class Event:
    """One ``event`` line: ``t_s`` is monotonic seconds, ``details`` the remaining keys."""

    t_s: float
    name: str
    details: dict[str, Any]
    line: int


@dataclass(frozen=True)
class RawTick:
    """The per-tick fields a re-run needs, re-read on demand from the log file."""

    seq: int
    action: list[float | None]  # empty: the policy was not called this tick
    reset_action: list[float] | None  # the history's fill on the tick the policy was reset
    targets_rad: list[float | None]
    pulses_us: dict[str, float]
    rx: list[list[Any]]


@dataclass(frozen=True)
class Segment:
    """One file of the run. For a zstd file frame ``i`` is bytes ``frame_starts[i]:frame_ends[i]``;
    a plain file is one "frame" starting at 0."""

    path: Path
    compressed: bool
    frame_starts: tuple[int, ...] = (0,)
    frame_ends: tuple[int, ...] = ()

    def frame_span(self, index: int) -> tuple[int, int]:
        """Byte range of zstd frame ``index``."""
        return self.frame_starts[index], self.frame_ends[index]


@dataclass
class LogData:
    """A latency log as columns: row ``i`` of every array is the ``i``-th readable loop line.

    Missing or null numbers are NaN (``bytes_written`` included, so a missing value cannot
    pass for zero bytes). ``mode_code`` indexes ``mode_names``; ``flag_bits`` is a bit set
    whose bit for a flag is ``flag_bit[name]``; use :meth:`mode_is` and :meth:`has_flag`.
    """

    path: Path
    header: dict[str, Any]
    seq: np.ndarray
    t_s: np.ndarray
    deadline_s: np.ndarray
    pkt_age_ms: np.ndarray
    stages_us: dict[str, np.ndarray]
    tick_us: np.ndarray
    rx_to_tx_us: np.ndarray
    quat_wxyz: np.ndarray
    gyro_rad_s: np.ndarray
    bytes_written: np.ndarray
    n_rx: np.ndarray
    mode_code: np.ndarray
    mode_names: list[str]
    flag_bits: np.ndarray
    flag_bit: dict[str, int]
    line_no: np.ndarray
    byte_offset: np.ndarray
    """Per tick: where its line starts, in bytes, within its frame (plain file: within the file)."""
    segment: np.ndarray
    """Per tick: index into :attr:`segments` of the file holding its line."""
    frame: np.ndarray
    """Per tick: index of its zstd frame in that file (0 in a plain file)."""
    segments: list[Segment] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    truncated: bool = False

    @property
    def n_ticks(self) -> int:
        return len(self.seq)

    @property
    def rate_hz(self) -> float | None:
        """The nominal loop rate from the header, if it states a usable one."""
        rate = self.header.get("rate_hz")
        return float(rate) if isinstance(rate, (int, float)) and rate > 0 else None

    def mode_is(self, name: str) -> np.ndarray:
        """Boolean per tick: the safety state was ``name``."""
        if name not in self.mode_names:
            return np.zeros(self.n_ticks, dtype=bool)
        return self.mode_code == self.mode_names.index(name)

    def has_flag(self, name: str) -> np.ndarray:
        """Boolean per tick: ``name`` was among the tick's flags."""
        if name not in self.flag_bit:
            return np.zeros(self.n_ticks, dtype=bool)
        return (self.flag_bits >> self.flag_bit[name]) & 1 == 1

    def raw_ticks(self, rows: Iterable[int] | None = None) -> Iterator[RawTick]:
        """Re-read the re-run fields of the given rows (all by default), in the order given."""
        for rec in self.records(rows):
            yield RawTick(
                seq=int(rec["seq"]),
                action=list(rec.get("action") or []),
                reset_action=rec.get("reset_action"),
                targets_rad=list(rec.get("targets_rad") or []),
                pulses_us=dict(rec.get("pulses_us") or {}),
                rx=list(rec.get("rx") or []),
            )

    def records(self, rows: Iterable[int] | None = None) -> Iterator[dict[str, Any]]:
        """Re-read the whole loop line of the given rows (all by default), decoded, in the order given."""
        indices = range(self.n_ticks) if rows is None else rows
        files: dict[int, BinaryIO] = {}
        frame_key, frame_data = (-1, -1), b""
        try:
            for i in indices:
                s, fr, offset = int(self.segment[i]), int(self.frame[i]), int(self.byte_offset[i])
                seg = self.segments[s]
                f = files.get(s) or files.setdefault(s, open(seg.path, "rb"))
                if seg.compressed:
                    if frame_key != (s, fr):
                        frame_key, frame_data = (s, fr), read_zstd_frame(f, *seg.frame_span(fr))
                    end = frame_data.find(b"\n", offset)
                    line = frame_data[offset:] if end < 0 else frame_data[offset:end + 1]
                    if end < 0 and fr + 1 < len(seg.frame_starts):  # a line carried over into the next frame
                        rest = read_zstd_frame(f, *seg.frame_span(fr + 1))
                        line += rest[: rest.find(b"\n") + 1]
                else:
                    f.seek(offset)
                    line = f.readline()
                yield json.loads(line)
        finally:
            for f in files.values():
                f.close()


def read_log(path: str | os.PathLike[str]) -> LogData:
    """Read a latency log (plain or zstd, and the files that continue a rotated one); raise
    :class:`LogError` only when nothing of it is usable."""
    path = Path(path)
    if not path.exists():
        raise LogError(f"{path}: no such file")
    reader = _LineReader()
    header: dict[str, Any] | None = None
    segments: list[Segment] = []
    line_no = 1
    for index, seg_path in enumerate(segment_paths(path)):
        try:
            f = open(seg_path, "rb")
        except OSError as exc:
            if header is None:
                raise LogError(f"{path}: cannot open: {exc.strerror or exc}") from None
            reader.notes.append(f"{seg_path.name}: cannot open ({exc.strerror or exc}); the run is read up to it")
            break
        with f:
            compressed = f.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC
            f.seek(0)
            scan = FrameScan()
            # A plain file streams line by line (an hour is ~285 MB); a zstd one is ~5x smaller.
            frames = iter_zstd_frames(f.read(), scan) if compressed else None
            first = next(frames, b"") if frames is not None else f.readline()
            head, _, rest = first.partition(b"\n")
            if header is None:
                if not first and scan.stopped is not None:
                    raise LogError(f"{path}: not readable as a zstd latency log: {scan.stopped}")
                header = _read_header(path, head)
            elif not _continues(header, head, expected := _segment_of(header) + index):
                reader.notes.append(f"{seg_path.name} does not continue this run (its first line is not this "
                                    f"run's header with \"segment\": {expected}); not read")
                break
            reader.segment, reader.frame = len(segments), 0
            if frames is None:
                line_no = reader.feed(f, line_no + 1, len(first))
            else:
                line_no = reader.feed(rest.splitlines(keepends=True), line_no + 1, len(head) + 1)
                for frame_index, frame in enumerate(frames, start=1):
                    reader.frame = frame_index
                    line_no = reader.feed(frame.splitlines(keepends=True), line_no, 0)
        reader.stopped.extend(f"{seg_path.name}: {note}" for note in scan.damaged)
        if scan.stopped is not None:
            reader.stopped.append(f"{seg_path.name}: {scan.stopped}")
        segments.append(Segment(seg_path, compressed, tuple(scan.starts) if compressed else (0,), tuple(scan.ends)))
    assert header is not None
    log = reader.finish(path, header)
    log.segments = segments
    return log


def _segment_of(header: dict[str, Any]) -> int:
    segment = header.get("segment")
    return segment if type(segment) is int else 0


def _continues(header: dict[str, Any], line: bytes, index: int) -> bool:
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return (isinstance(rec, dict) and rec.get("type") == "header" and rec.get("segment") == index
            and rec.get("started_unix") == header.get("started_unix"))


def _first_text(line: bytes, n_bytes: int = 80) -> str:
    """The start of a line that should have been the header, quoted, or "binary data": a
    terminal shown raw bytes of another format's file gets escape sequences, not a reason."""
    try:  # incremental: a character cut at n_bytes is dropped, not an error
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(line[:n_bytes]).rstrip()
    except UnicodeDecodeError:
        text = None
    if text is None or not text.replace("\t", " ").isprintable():
        return "binary data (not JSON Lines text)"
    return repr(text)


def _read_header(path: Path, line: bytes) -> dict[str, Any]:
    if not line.strip():
        raise LogError(f"{path}: not a robotd latency log: the file is empty")
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise LogError(
            f"{path}: not a robotd latency log: the first line should be a JSON object with "
            f'"type": "header", found {_first_text(line)}'
        )
    schema = header.get("schema")
    if type(schema) is not int or schema < 1:
        raise LogError(f"{path}: the log header has no valid schema version (found {schema!r})")
    if schema > SUPPORTED_SCHEMA:
        raise LogError(
            f"{path}: log schema {schema} is newer than this reader supports (schema {SUPPORTED_SCHEMA}); "
            "update robotd to read it"
        )
    return header


class _LineReader:
    """Accumulates lines into per-column Python lists; :meth:`finish` turns them into arrays.

    Values are appended unchecked (checking each one costs more than the decode); a column
    that numpy cannot convert is converted again value by value in :meth:`_float_column`,
    which turns the bad values into NaN and reports their lines.
    """

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {
            name: []
            for name in ("seq", "t", "deadline", "pkt_age_ms", "tick_us", "rx_to_tx_us", "quat", "gyro",
                         "bytes", "n_rx", "mode", "flags", "line", "offset", "segment", "frame",
                         *(f"stage_{s}" for s in STAGES))
        }
        self.segment = 0  # where the lines being fed come from (set by read_log)
        self.frame = 0
        self.stopped: list[str] = []
        self.mode_code: dict[str, int] = {}
        self.flag_bit: dict[str, int] = {}
        self.events: list[Event] = []
        self.summary: dict[str, Any] | None = None
        self.bad_lines: list[int] = []
        self.notes: list[str] = []
        self.unknown_types: dict[str, int] = {}
        self.truncated_line: int | None = None

    def feed(self, lines: Iterable[bytes], line_no: int, offset: int) -> int:
        """Take every line; ``line_no``/``offset`` are the first one's. Returns the next line number."""
        loads = json.loads  # local names: this loop runs once per tick of the run
        take = self._take
        for line in lines:
            try:
                rec = loads(line)
            except ValueError:
                self._undecodable(line, line_no)
            else:
                take(rec, line_no, offset)
            line_no += 1
            offset += len(line)
        return line_no

    def _undecodable(self, line: bytes, line_no: int) -> None:
        if not line.strip():
            return  # a blank line carries nothing and harms nothing
        if line.endswith(b"\n"):
            self.bad_lines.append(line_no)
        else:
            self.truncated_line = line_no  # only the file's last line can lack its newline

    def _take(self, rec: Any, line_no: int, offset: int) -> None:
        kind = rec.get("type") if type(rec) is dict else None
        if kind == "loop":
            try:
                seq, t = rec["seq"], rec["t"]
                stages = rec.get("stages_us") or {}
                stage_values = [stages.get(s) for s in STAGES]
            except (KeyError, AttributeError):
                self.bad_lines.append(line_no)
                return
            c = self.columns
            c["seq"].append(seq)
            c["t"].append(t)
            c["deadline"].append(rec.get("deadline"))
            c["pkt_age_ms"].append(rec.get("pkt_age_ms"))
            c["tick_us"].append(rec.get("tick_us"))
            c["rx_to_tx_us"].append(rec.get("rx_to_tx_us"))
            c["quat"].append(rec.get("quat"))
            c["gyro"].append(rec.get("gyro"))
            c["bytes"].append(rec.get("bytes"))
            rx = rec.get("rx")
            c["n_rx"].append(len(rx) if type(rx) is list else 0)
            mode = rec.get("mode")
            if type(mode) is not str:
                mode = "unknown"
            code = self.mode_code.get(mode)
            if code is None:
                code = self.mode_code[mode] = len(self.mode_code)
            c["mode"].append(code)
            flags = rec.get("flags")
            c["flags"].append(self._flag_bits(flags) if flags else 0)
            c["line"].append(line_no)
            c["offset"].append(offset)
            c["segment"].append(self.segment)
            c["frame"].append(self.frame)
            for s, v in zip(STAGES, stage_values):
                c["stage_" + s].append(v)
        elif kind == "event":
            t = rec.get("t")
            name = rec.get("event")
            if not isinstance(t, (int, float)) or not isinstance(name, str):
                self.bad_lines.append(line_no)
                return
            details = {k: v for k, v in rec.items() if k not in ("type", "t", "event")}
            self.events.append(Event(t_s=float(t), name=name, details=details, line=line_no))
        elif kind == "summary":
            self.summary = {k: v for k, v in rec.items() if k != "type"}
        elif kind == "header":
            self.notes.append(f"line {line_no}: a second header, ignored (were two logs concatenated?)")
        elif kind is None:
            self.bad_lines.append(line_no)
        else:
            self.unknown_types[str(kind)] = self.unknown_types.get(str(kind), 0) + 1

    def _flag_bits(self, flags: Any) -> int:
        bits = 0
        for name in flags if type(flags) is list else ():
            if type(name) is not str:
                continue
            bit = self.flag_bit.get(name)
            if bit is None:
                if len(self.flag_bit) >= 63:  # an int64 bit set; no real log has this many
                    continue
                bit = self.flag_bit[name] = len(self.flag_bit)
            bits |= 1 << bit
        return bits

    def finish(self, path: Path, header: dict[str, Any]) -> LogData:
        c = self.columns
        lines = np.asarray(c["line"], dtype=np.int64)
        warnings: list[str] = []
        seq = self._float_column("seq", lines, warnings)
        t_s = self._float_column("t", lines, warnings)
        keep = np.isfinite(seq) & np.isfinite(t_s)  # a tick without seq or time cannot be placed
        if not keep.all():
            self.bad_lines.extend(lines[~keep].tolist())
        stages = {s: self._float_column("stage_" + s, lines, warnings)[keep] for s in STAGES}
        data = LogData(
            path=path,
            header=header,
            seq=seq[keep].astype(np.int64),
            t_s=t_s[keep],
            deadline_s=self._float_column("deadline", lines, warnings)[keep],
            pkt_age_ms=self._float_column("pkt_age_ms", lines, warnings)[keep],
            stages_us=stages,
            tick_us=self._float_column("tick_us", lines, warnings)[keep],
            rx_to_tx_us=self._float_column("rx_to_tx_us", lines, warnings)[keep],
            quat_wxyz=self._vector_column("quat", 4, lines, warnings)[keep],
            gyro_rad_s=self._vector_column("gyro", 3, lines, warnings)[keep],
            bytes_written=self._float_column("bytes", lines, warnings)[keep],
            n_rx=np.asarray(c["n_rx"], dtype=np.int64)[keep],
            mode_code=np.asarray(c["mode"], dtype=np.int16)[keep],
            mode_names=list(self.mode_code),
            flag_bits=np.asarray(c["flags"], dtype=np.int64)[keep],
            flag_bit=dict(self.flag_bit),
            line_no=lines[keep],
            byte_offset=np.asarray(c["offset"], dtype=np.int64)[keep],
            segment=np.asarray(c["segment"], dtype=np.int32)[keep],
            frame=np.asarray(c["frame"], dtype=np.int64)[keep],
            events=sorted(self.events, key=lambda e: e.t_s),
            summary=self.summary,
            bad_lines=sorted(self.bad_lines),
            truncated=self.truncated_line is not None,
        )
        data.warnings = self._warnings(data) + warnings
        return data

    def _warnings(self, data: LogData) -> list[str]:
        out = []
        if self.truncated_line is not None:
            out.append(f"the last line (line {self.truncated_line}) is truncated and was skipped "
                       "(the run was cut off mid-write)")
        if data.bad_lines:
            out.append(f"{len(data.bad_lines)} unreadable line(s) skipped: {_line_list(data.bad_lines)}")
        out.extend(self.stopped)
        out.extend(self.notes)
        for kind, count in sorted(self.unknown_types.items()):
            out.append(f'{count} line(s) of unknown type "{kind}" ignored')
        if data.summary is None:
            where = (f"; it ends at tick seq {int(data.seq[-1])}, {data.t_s[-1] - data.t_s[0]:.2f} s after the first "
                     f"tick (line {int(data.line_no[-1])})" if data.n_ticks else "; it has no loop lines")
            out.append("no summary line: the run did not exit cleanly, or the log is still being written" + where)
        if data.n_ticks > 1:
            gaps = int(np.count_nonzero(np.diff(data.seq) != 1))
            if gaps:
                out.append(f"tick numbers are not consecutive in {gaps} place(s) "
                           "(records dropped by the writer, or lines lost)")
        return out

    def _float_column(self, name: str, lines: np.ndarray, warnings: list[str]) -> np.ndarray:
        values = self.columns[name]
        try:
            return np.asarray(values, dtype=np.float64).reshape(len(lines))
        except (TypeError, ValueError):
            pass
        out = np.full(len(values), np.nan)
        bad = []
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[i] = v
            else:
                bad.append(int(lines[i]))
        warnings.append(f'"{name}" is not a number on {len(bad)} line(s), read as missing: {_line_list(bad)}')
        return out

    def _vector_column(self, name: str, width: int, lines: np.ndarray, warnings: list[str]) -> np.ndarray:
        values = self.columns[name]
        missing = [np.nan] * width
        try:
            return np.asarray([missing if v is None else v for v in values], dtype=np.float64).reshape(-1, width)
        except (TypeError, ValueError):
            pass
        out = np.full((len(values), width), np.nan)
        bad = []
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                out[i] = np.asarray(v, dtype=np.float64).reshape(width)
            except (TypeError, ValueError):
                bad.append(int(lines[i]))
        warnings.append(f'"{name}" is not a list of {width} numbers on {len(bad)} line(s), read as missing: '
                        f"{_line_list(bad)}")
        return out


def _line_list(line_nos: list[int]) -> str:
    shown = ", ".join(str(n) for n in line_nos[:_MAX_LISTED_LINES])
    more = len(line_nos) - _MAX_LISTED_LINES
    return f"lines {shown}" + (f" and {more} more" if more > 0 else "")
