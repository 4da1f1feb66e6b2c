"""The latency log's files on disk: plain or zstd-compressed, optionally rotated.

A log whose name ends in ``.zst`` is written as a sequence of independent zstd frames, each
with its checksum, one per :data:`FLUSHES_PER_FRAME` flushes (a second); each flush (every
100 ms) ends a zstd block, so what a flush wrote decodes without anything after it. A SIGKILL
can only cut the block being written: every earlier frame, and the finished blocks of the cut
one, decompress, and ``zstd -dc run.log.zst`` gives the same JSON Lines a plain log holds (up
to the cut). Within a frame, each block can refer back to the earlier ones, which is what
makes a frame of ten flushes ~1.2x smaller than ten frames of one; a frame stays short so a
damaged one costs at most a second and the reader re-reads one tick's line by decompressing
one small frame instead of the whole file.

``max_bytes`` rotates: when a segment has grown past it (checked at each flush, so a segment
ends at most one flush interval past the limit), the writer closes it and continues in the
next numbered file, ``run.log.zst``, ``run.1.log.zst``, ``run.2.log.zst`` ... Each segment
starts with the run's header line plus ``"segment": k``, so every file is readable alone, and
:func:`segment_paths` finds the files that continue a run (the reader reads them as one).

Writer and reader share :func:`segment_path`, the one naming rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

ZSTD_SUFFIX = ".zst"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
"""The first four bytes of every zstd frame (RFC 8878), how the reader tells the formats apart."""
ZSTD_LEVEL = 3
"""zstd's default level: ~0.03 ms of writer-thread CPU per 100 ms frame; levels up to 19 save
under 10 % more on these logs at up to 40x the CPU."""
FLUSHES_PER_FRAME = 10
"""Flushes (100 ms each) per zstd frame: the unit a damaged file loses and the reader decodes."""
_LOG_SUFFIXES = (".zst", ".log", ".jsonl", ".json")


def is_compressed_name(path: Path | str) -> bool:
    """The writer compresses when the log's name ends in ``.zst``."""
    return str(path).endswith(ZSTD_SUFFIX)


def segment_path(path: Path | str, index: int) -> Path:
    """The ``index``-th file of a rotated log: 0 is ``path``; then ``.N`` goes before the log
    suffixes (``run.log.zst`` -> ``run.1.log.zst``, ``latency.log`` -> ``latency.1.log``)."""
    path = Path(path)
    if index == 0:
        return path
    name, suffixes = path.name, ""
    while any(name.endswith(s) and len(name) > len(s) for s in _LOG_SUFFIXES):
        suffix = next(s for s in _LOG_SUFFIXES if name.endswith(s))
        name, suffixes = name[: -len(suffix)], suffix + suffixes
    return path.with_name(f"{name}.{index}{suffixes}")


def segment_index(path: Path | str) -> int:
    """Inverse of :func:`segment_path` on a name: ``run.3.log.zst`` -> 3, ``run.log.zst`` -> 0."""
    match = re.search(r"\.(\d+)((?:\.zst|\.log|\.jsonl|\.json)+)$", Path(path).name)
    return int(match.group(1)) if match else 0


def segment_paths(path: Path | str) -> list[Path]:
    """``path`` and the numbered files that continue it, in order, up to the first missing one."""
    path = Path(path)
    first = segment_index(path)
    base = path
    if first:
        # run.2.log.zst: the run's first file is run.log.zst; continue from segment 2.
        base = path.with_name(re.sub(r"\.\d+((?:\.zst|\.log|\.jsonl|\.json)+)$", r"\1", path.name))
    out = [path]
    while (nxt := segment_path(base, first + len(out))).exists():
        out.append(nxt)
    return out


class LogFileWriter:
    """Text out to a plain or zstd file (by name), rotated past ``max_bytes``; one writer thread.

    ``header_for(k)`` gives segment ``k``'s first line. :meth:`write` buffers; :meth:`flush`
    puts the buffer on disk (as a zstd block when compressing) and rotates if due. Files are
    written unbuffered below this class, so a failed flush loses exactly what it was writing
    (nothing stays behind in a buffer to reappear later): the caller counts those lines.

    A rotated segment is created exclusively: a file that already has the next segment's name
    is never overwritten; the run then keeps writing into the current segment and
    :attr:`rotation_stopped` says why.
    """

    def __init__(self, path: Path | str, header_for: Callable[[int], str], max_bytes: int | None = None):
        self.path = Path(path)
        self.compressed = is_compressed_name(self.path)
        self.max_bytes = max_bytes
        self.segment = 0
        self.segments: list[Path] = []
        self.rotation_stopped: str | None = None
        self._header_for = header_for
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True) if self.compressed else None
        self._frame: zstandard.ZstdCompressionObj | None = None  # the zstd frame being written
        self._frame_flushes = 0
        self._cut_line = False  # a plain write failed part-way: the file may end mid-line
        self._pending: list[str] = []
        self._file = self._open(0, "wb")  # segment 0 is the path the run claimed (robotd.logs.log_path)
        self.flush()  # the header is on disk before the first tick

    def _open(self, index: int, mode: str = "xb"):  # noqa: ANN202 - a raw binary file
        path = segment_path(self.path, index)
        f = open(path, mode, buffering=0)
        self.segments.append(path)
        self._size = 0
        self._pending.append(self._header_for(index) + "\n")
        self._lines = 0  # lines after the header: a segment never rotates before holding one
        return f

    def write(self, line: str) -> None:
        """Queue one line (without its newline) for the next flush."""
        self._pending.append(line)
        self._pending.append("\n")
        self._lines += 1

    def flush(self) -> None:
        """Write what is queued; raises OSError if the disk refuses it (what was queued is then lost)."""
        if self._pending:
            data = "".join(self._pending).encode("utf-8")
            self._pending.clear()
            if self._compressor is not None:
                data = self._compressed(data)
            self._write_all(data)
        if self.max_bytes is not None and self._size >= self.max_bytes and self._lines:
            self._end_frame()
            self._rotate()

    def _compressed(self, data: bytes) -> bytes:
        """``data`` as the next block of the current frame (started if need be), ending the
        frame after :data:`FLUSHES_PER_FRAME` flushes."""
        if self._frame is None:
            self._frame = self._compressor.compressobj(size=-1)
            self._frame_flushes = 0
        self._frame_flushes += 1
        last = self._frame_flushes >= FLUSHES_PER_FRAME
        out = self._frame.compress(data) + self._frame.flush(
            zstandard.COMPRESSOBJ_FLUSH_FINISH if last else zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        if last:
            self._frame = None
        return out

    def _end_frame(self) -> None:
        """Finish the zstd frame being written (before a rotation or the close)."""
        if self._frame is not None:
            frame, self._frame = self._frame, None
            self._write_all(frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))

    def _write_all(self, data: bytes) -> None:
        if self._cut_line:
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:  # a raw write may take only part of the data
                view = view[self._file.write(view):]
        except BaseException:
            # Part of it may be in the file. Compressed, the frame's later blocks would refer
            # back to what is missing: the next flush starts a new frame (the reader keeps the
            # broken one's finished blocks). Plain, a cut line would swallow the next one: the
            # next flush starts on a new line.
            self._frame = None
            self._cut_line = not self.compressed
            raise
        self._size += len(data)
        self._cut_line = False

    def _rotate(self) -> None:
        try:
            nxt = self._open(self.segment + 1)
        except OSError as exc:  # FileExistsError above all: never overwrite another file
            self.rotation_stopped = (f"cannot start {segment_path(self.path, self.segment + 1)} "
                                     f"({exc.strerror or exc}); the log continues in {self.segments[-1]}")
            self.max_bytes = None
            return
        old, self._file = self._file, nxt
        self.segment += 1
        try:
            self._close_file(old)
        except OSError:
            pass  # its lines were written; only the fsync of a finished segment failed

    def close(self) -> None:
        """Flush, fsync and close the current segment (closed even if the flush fails)."""
        try:
            self.flush()
            self._end_frame()
        finally:
            self._close_file(self._file)

    @staticmethod
    def _close_file(f) -> None:  # noqa: ANN001 - a raw binary file
        try:
            os.fsync(f.fileno())
        finally:
            f.close()


@dataclass
class FrameScan:
    """The frames of one zstd segment: frame ``i`` is bytes ``starts[i]:ends[i]`` of the file."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    stopped: str | None = None
    """Why the scan ended before the end of the file (a cut-off last frame), if it did."""
    damaged: list[str] = field(default_factory=list)
    """One line per damaged frame skipped."""
    skipped_bytes: int = 0


def _decode_frame(dctx: zstandard.ZstdDecompressor, data: memoryview, pos: int, end: int) -> tuple[bytes, int, bool]:
    """Decompress the frame at ``pos`` from ``data[pos:end]``: (text, where it ended, whether it
    was complete). A frame cut short yields its finished blocks; raises ``ZstdError`` on garbage."""
    dobj = dctx.decompressobj()
    out: list[bytes] = []
    consumed = pos
    chunk = 1 << 16
    while not dobj.eof and consumed < end:
        piece = data[consumed : min(consumed + chunk, end)]
        out.append(dobj.decompress(piece))
        consumed += len(piece) - (len(dobj.unused_data) if dobj.eof else 0)
    return b"".join(out), consumed, dobj.eof


def iter_zstd_frames(data: bytes, scan: FrameScan) -> Iterator[bytes]:
    """Decompress ``data`` frame by frame, recording each frame's offset in ``scan``.

    A frame cut short (the writer was killed mid-write, or a write failed and the writer went on
    with a new frame) gives the blocks it finished; a cut-off last frame ends the scan, with
    ``scan.stopped`` saying at which byte. A damaged frame (bad checksum, garbage) is skipped
    up to the next frame magic and counted.
    """
    dctx = zstandard.ZstdDecompressor()
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos < end:
        try:
            text, consumed, complete = _decode_frame(dctx, view, pos, end)
        except zstandard.ZstdError as exc:
            nxt = data.find(ZSTD_MAGIC, pos + 1)
            nxt = end if nxt < 0 else nxt
            try:  # a frame cut short by a failed write, the next frame right after it?
                text, _, complete = _decode_frame(dctx, view, pos, nxt)
            except zstandard.ZstdError:
                complete = True
            if not complete and nxt < end:
                scan.starts.append(pos)
                scan.ends.append(nxt)
                yield text
            else:
                scan.skipped_bytes += nxt - pos
                scan.damaged.append(f"a damaged zstd frame at byte {pos} ({exc}): {nxt - pos} byte(s) skipped")
            pos = nxt
            continue
        scan.starts.append(pos)
        scan.ends.append(consumed)
        if not complete:
            scan.stopped = (f"the last zstd frame (byte {pos} of {end}) is incomplete: the run was cut off "
                            f"mid-write; read up to its last complete block")
        yield text
        if not complete:
            return
        pos = consumed


def read_zstd_frame(f, start: int, stop: int) -> bytes:  # noqa: ANN001 - a binary file
    """Decompress the one frame at bytes ``start:stop`` of ``f``: what :func:`iter_zstd_frames`
    gave for it."""
    f.seek(start)
    data = f.read(stop - start)
    return _decode_frame(zstandard.ZstdDecompressor(), memoryview(data), 0, len(data))[0]
