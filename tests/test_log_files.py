"""Compressed and rotated latency logs: the writer's files, and the reader reading them as one run.

The same records go through :class:`~robotd.logs.latency_log.LatencyLog` into a plain log, a
``.zst`` log and rotated logs; the reader must give the same columns, events, summary and
re-read per-tick fields for all of them, and say where it stopped when a file is cut short.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np
import pytest
import zstandard
from test_latency_log import run_and_kill
from test_logread import synthetic_run

from robotd.logs.latency_log import LatencyLog
from robotd.logs.log_files import FLUSHES_PER_FRAME, segment_index, segment_path, segment_paths
from robotd.logs.logread import LogData, LogError, read_log

HEADER = {"rate_hz": 50.0, "started_unix": 1760000000.0, "joint_names": ["a", "b"]}


def write(path: Path, n_ticks: int, *, max_bytes: int | None = None, flush_every: int = 5,
          flush_sizes: list[int] | None = None) -> LatencyLog:
    """Write ``n_ticks`` synthetic ticks, flushing every ``flush_every`` records (as 100 ms at 50 Hz);
    ``flush_sizes`` gets the file's size after each of those flushes."""
    log = LatencyLog(path, HEADER, flush_interval_s=3600.0, max_bytes=max_bytes)
    for i, rec in enumerate(synthetic_run(n_ticks, fall=(40, 60))):
        log._write(rec)  # the writer thread's own step, synchronously: frame boundaries are deterministic
        if i % flush_every == flush_every - 1:
            log._flush()
            if flush_sizes is not None:
                flush_sizes.append(log._file._size)
    log.close({"ticks": n_ticks})
    return log


def assert_same_run(a: LogData, b: LogData, *, same_lines: bool = True) -> None:
    """Same ticks, events, summary and re-read fields (and line numbers, unless the files differ in headers)."""
    for name in ("seq", "t_s", "tick_us", "pkt_age_ms", "quat_wxyz", "gyro_rad_s", "n_rx", "flag_bits",
                 *(("line_no",) if same_lines else ())):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert [(e.name, e.t_s) for e in a.events] == [(e.name, e.t_s) for e in b.events]
    assert a.summary == b.summary and a.mode_names == b.mode_names
    assert list(a.raw_ticks()) == list(b.raw_ticks())


def test_segment_names() -> None:
    assert segment_path(Path("d/run.log.zst"), 0) == Path("d/run.log.zst")
    assert segment_path(Path("d/run.log.zst"), 2) == Path("d/run.2.log.zst")
    assert segment_path(Path("latency.log"), 1) == Path("latency.1.log")
    assert segment_path(Path("out"), 3) == Path("out.3")
    assert segment_index("run.12.log.zst") == 12 and segment_index("run.log.zst") == 0


def test_zstd_log_reads_like_the_plain_one_and_is_standard_zstd(tmp_path: Path) -> None:
    write(tmp_path / "a.log", 300)
    write(tmp_path / "a.log.zst", 300)
    plain, packed = read_log(tmp_path / "a.log"), read_log(tmp_path / "a.log.zst")
    assert packed.n_ticks == 300 and not packed.warnings and packed.segments[0].compressed
    # One frame per FLUSHES_PER_FRAME flushes (the header's, then 60 of 5 ticks), not one for the file.
    assert len(packed.segments[0].frame_starts) == math.ceil(61 / FLUSHES_PER_FRAME) > 1
    assert_same_run(plain, packed)
    # Any zstd tool gives back exactly the plain log's bytes (frames concatenate).
    with open(tmp_path / "a.log.zst", "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    assert text == (tmp_path / "a.log").read_bytes()
    assert (tmp_path / "a.log.zst").stat().st_size < (tmp_path / "a.log").stat().st_size / 2


@pytest.mark.parametrize("name", ["r.log", "r.log.zst"])
def test_rotated_log_reads_as_one_run(tmp_path: Path, name: str) -> None:
    log = write(tmp_path / name, 400, max_bytes=40_000)
    single = write(tmp_path / ("single." + name), 400)
    assert len(log.segments) >= 4 and log.segments == segment_paths(tmp_path / name)
    assert all(p.stat().st_size < 40_000 + 15_000 for p in log.segments)  # rotates at the first flush past it
    run = read_log(tmp_path / name)
    assert run.warnings == [], run.warnings  # later headers are the run's own, not "a second header"
    assert len(run.segments) == len(log.segments) and run.n_ticks == 400
    assert len(np.unique(run.segment)) == len(log.segments)
    assert_same_run(read_log(single.path), run, same_lines=False)  # + a header per file
    # A later file alone reads from there on: every file starts with the run's header.
    tail = read_log(log.segments[2])
    assert tail.header["segment"] == 2 and 0 < tail.n_ticks < 400 and tail.seq[-1] == 399


def test_a_foreign_file_with_a_continuation_name_is_not_read(tmp_path: Path) -> None:
    write(tmp_path / "r.log.zst", 100)
    write(tmp_path / "other.log.zst", 10)
    os.rename(tmp_path / "other.log.zst", tmp_path / "r.1.log.zst")
    run = read_log(tmp_path / "r.log.zst")
    assert run.n_ticks == 100 and any("does not continue this run" in w for w in run.warnings)


def test_cut_off_zstd_log_reads_to_the_last_whole_flush_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "cut.log.zst"
    sizes: list[int] = []
    write(path, 300, flush_sizes=sizes)
    whole = read_log(path)
    data = path.read_bytes()
    cut_at = (sizes[32] + sizes[33]) // 2  # mid-flush, as a SIGKILL mid-write leaves it
    path.write_bytes(data[:cut_at])
    log = read_log(path)
    records = list(synthetic_run(300, fall=(40, 60)))[: 33 * 5]  # the 33 whole flushes
    assert log.n_ticks == sum(r["type"] == "loop" for r in records) and log.summary is None
    np.testing.assert_array_equal(log.seq, whole.seq[: log.n_ticks])
    stopped = [w for w in log.warnings if "incomplete" in w]
    cut_frame = log.segments[0].frame_starts[-1]
    assert stopped and f"byte {cut_frame} of {cut_at}" in stopped[0] and "cut.log.zst" in stopped[0]
    assert any(f"ends at tick seq {log.seq[-1]}" in w for w in log.warnings)
    assert list(log.raw_ticks([log.n_ticks - 1]))[0].seq == log.seq[-1]


def test_damaged_frame_is_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "bad.log.zst"
    write(path, 300)
    whole = read_log(path)
    starts = whole.segments[0].frame_starts
    data = bytearray(path.read_bytes())
    data[starts[3] + 20] ^= 0xFF  # a flipped byte: the frame's checksum (or structure) fails
    path.write_bytes(bytes(data))
    log = read_log(path)
    lost = int(np.count_nonzero(whole.frame == 3))
    assert 0 < lost <= 5 * FLUSHES_PER_FRAME and log.n_ticks == 300 - lost and log.summary == whole.summary
    assert any("not consecutive" in w for w in log.warnings)
    assert any(f"bad.log.zst: a damaged zstd frame at byte {starts[3]}" in w for w in log.warnings), log.warnings


class _FailingWrite:
    """A file whose ``fail_at``-th write puts half the bytes on disk and raises ENOSPC."""

    def __init__(self, f, fail_at: int):  # noqa: ANN001 - a raw binary file
        self.f, self.fail_at, self.writes = f, fail_at, 0

    def write(self, data: memoryview) -> int:
        self.writes += 1
        if self.writes == self.fail_at:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name: str):  # noqa: ANN204 - fileno, close
        return getattr(self.f, name)


@pytest.mark.parametrize("name", ["w.log", "w.log.zst"], ids=["plain", "zstd"])
def test_a_failed_write_mid_frame_loses_exactly_its_flush(tmp_path: Path, name: str) -> None:
    """The disk refuses one flush in the middle of a zstd frame (half of it reaches the file):
    the writer counts that flush's records as dropped and goes on; the reader gives back every
    other tick, the broken frame's earlier flushes included (for zstd, none of the failed one)."""
    log = LatencyLog(tmp_path / name, HEADER, flush_interval_s=3600.0)
    log._file._file = _FailingWrite(log._file._file, fail_at=4)  # the 4th flush of the ticks (1st: header)
    for i, rec in enumerate(synthetic_run(100)):
        log._write(rec)
        if i % 5 == 4:
            try:
                log._flush()
            except OSError:
                pass
    log.close({"ticks": 100})
    assert log.dropped == 5
    run = read_log(tmp_path / name)
    others = [s for s in range(100) if not 15 <= s < 20]
    if name.endswith(".zst"):
        assert list(run.seq) == others
    else:  # half a plain flush is on disk: its whole lines read back, its cut one is skipped
        assert list(run.seq) == sorted({*others, *run.seq}) and len(run.bad_lines) == 1
    assert set(others) <= set(run.seq) and run.summary == {"ticks": 100}


def test_not_a_log_compressed_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.log.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"hello\n"))
    with pytest.raises(LogError, match="not a robotd latency log"):
        read_log(path)
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"type":"header","schema":1}\n' * 50)[:20])
    with pytest.raises(LogError, match="incomplete"):
        read_log(path)


_KILLED_WRITER = """
import sys, time
from robotd.logs.latency_log import LatencyLog
log = LatencyLog(sys.argv[1], {"rate_hz": 50.0}, flush_interval_s=0.1, max_bytes=int(sys.argv[2]))
seq = 0
while True:
    log.put({"type": "loop", "seq": seq, "t": time.monotonic(), "rx": [[time.monotonic(), 1.0, "gyro", [seq, 2.0, 3.0]]]})
    seq += 1
    time.sleep(0.002)
"""


def test_sigkill_mid_rotation_run_reads_up_to_the_last_frame(tmp_path: Path) -> None:
    path = tmp_path / "killed.log.zst"
    t_kill = run_and_kill(_KILLED_WRITER, str(path), "2000")
    log = read_log(path)
    assert len(log.segments) >= 2 and log.summary is None
    assert log.seq.tolist() == list(range(log.n_ticks))  # nothing missing across the files
    assert log.t_s[-1] >= t_kill - 0.1 - 0.15  # at most one flush interval (plus slack) lost
    assert any(f"ends at tick seq {log.seq[-1]}" in w for w in log.warnings)


def test_rotation_never_overwrites_a_file(tmp_path: Path) -> None:
    """A file that already has the next segment's name (it appeared during the run) is left as it
    was: the log goes on in the segment it is in, says so in an event, and loses no tick."""
    path = tmp_path / "r.log.zst"
    (tmp_path / "r.2.log.zst").write_bytes(b"someone else's file")
    log = write(path, 400, max_bytes=40_000)
    assert log.segments == [path, tmp_path / "r.1.log.zst"]
    assert (tmp_path / "r.2.log.zst").read_bytes() == b"someone else's file"
    assert log.dropped == 0
    run = read_log(path)
    assert run.n_ticks == 400 and run.seq.tolist() == list(range(400)) and run.summary is not None
    assert any(e.name == "log_rotation_stopped" for e in run.events)
    assert any("r.2.log.zst does not continue this run" in w for w in run.warnings), run.warnings


def test_an_hour_of_a_simulated_run_fits_in_60_mb(tmp_path: Path) -> None:
    """The size target of a compressed log, on what the daemon writes for the simulated robot
    (a 100-200 Hz phone, the learned policy, pushes): under 60 MB per hour of run (41.9 measured
    over 60 s; docs/latency-log.md), and it re-runs exactly."""
    import subprocess
    import sys

    from daemon_harness import free_udp_port

    path = tmp_path / "run.log.zst"
    proc = subprocess.run([sys.executable, "-m", "robotd.cli", "run", "--port", "sim", "--duration", "8",
                           "--log", str(path), "--udp", f"127.0.0.1:{free_udp_port()}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run = read_log(path)
    assert run.n_ticks > 350 and not run.warnings, run.warnings
    mb_per_hour = path.stat().st_size / 1e6 / (run.n_ticks / run.rate_hz / 3600)
    assert mb_per_hour < 60.0, mb_per_hour
    rerun = subprocess.run([sys.executable, "-m", "robotd.cli", "replay", str(path), "--rerun"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "REPRODUCED exactly" in rerun.stdout, rerun.stdout + rerun.stderr
