"""The latency log writer: header first, numpy-safe, flushed on time, survives SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robotd.logs.latency_log import LOG_SCHEMA_VERSION, LatencyLog


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_header_records_events_summary(tmp_path: Path) -> None:
    path = tmp_path / "l.log"
    log = LatencyLog(path, {"rate_hz": 50.0})
    log.put({"type": "loop", "seq": 0, "quat": np.array([1.0, 0, 0, 0]), "age": np.float32(2.5),
             "bad": float("nan"), "nested": [np.nan, 1.0]})
    log.event("fall", tilt_deg=50.0)
    log.close({"ticks": 1})
    lines = _lines(path)
    assert lines[0] == {"type": "header", "schema": LOG_SCHEMA_VERSION, "rate_hz": 50.0}
    assert lines[1]["quat"] == [1.0, 0.0, 0.0, 0.0] and lines[1]["age"] == 2.5
    assert lines[1]["bad"] is None and lines[1]["nested"] == [None, 1.0]
    assert lines[2]["type"] == "event" and lines[2]["event"] == "fall"
    assert lines[3] == {"type": "summary", "ticks": 1}


def test_put_never_blocks_and_flushes_within_interval(tmp_path: Path) -> None:
    path = tmp_path / "l.log"
    log = LatencyLog(path, {}, flush_interval_s=0.1)
    for seq in range(2000):
        log.put({"type": "loop", "seq": seq, "targets_rad": np.zeros(17)})
    time.sleep(0.35)  # > flush interval + writer wake-up: everything is on disk without close()
    assert len(_lines(path)) == 2001
    log.close()


def test_put_does_not_wait_for_a_stuck_writer(tmp_path: Path) -> None:
    """The writer is stuck (a dead disk: each write takes 0.5 s). 1000 puts into a 10-record
    queue must still return at once, dropping and counting what does not fit. Were put to
    wait for the writer, they would take minutes; the bound (2 s for all 1000) has that
    headroom on a busy machine, where each put is ~1 µs."""
    import threading

    release = threading.Event()
    log = LatencyLog(tmp_path / "l.log", {}, max_queue=10)
    real_write = log._write

    def stuck_write(record):
        release.wait(0.5)
        real_write(record)

    log._write = stuck_write  # type: ignore[method-assign]
    start_s = time.monotonic()
    for seq in range(1000):
        log.put({"type": "loop", "seq": seq})
    elapsed_s = time.monotonic() - start_s
    assert elapsed_s < 2.0
    assert log.dropped >= 1000 - 10 - 1  # the queue's 10 and at most one in the writer's hands
    release.set()
    log.close()


_KILLED_WRITER = """
import sys, time
from robotd.logs.latency_log import LatencyLog
log = LatencyLog(sys.argv[1], {"rate_hz": 50.0}, flush_interval_s=0.1)
seq = 0
while True:
    log.put({"type": "loop", "seq": seq, "t": time.monotonic()})
    seq += 1
    time.sleep(0.002)
"""


def run_and_kill(script: str, *args: str, run_s: float = 1.5) -> float:
    """Run ``python -c script args`` for ``run_s``, SIGKILL it; returns the kill's monotonic time."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=Path(__file__).parents[1])
    try:
        time.sleep(run_s)
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    return t_kill


def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "killed.log"
    t_kill = run_and_kill(_KILLED_WRITER, str(path))
    text = path.read_text()
    complete = [json.loads(line) for line in text.split("\n")[:-1]]  # the last piece may be cut
    assert complete[0]["type"] == "header"
    loops = [r for r in complete if r["type"] == "loop"]
    assert loops, "nothing was flushed before the kill"
    assert [r["seq"] for r in loops] == list(range(len(loops)))
    # CLOCK_MONOTONIC is system-wide, so the child's timestamps compare with ours: the newest
    # record on disk is at most one flush interval (0.1 s) plus scheduling slack older than the kill.
    assert loops[-1]["t"] >= t_kill - 0.1 - 0.15


@pytest.mark.parametrize("name", ["l.log", "l.log.zst"], ids=["plain", "zstd"])
def test_a_full_disk_counts_dropped_records_and_the_writer_survives(tmp_path: Path, name: str) -> None:
    """Writes fail with ENOSPC (/dev/full): every lost record is counted, the health text says
    why, the writer keeps going (a later record is counted too) and close() does not raise;
    for the plain writer and the zstd one (whose flush writes one frame) alike."""
    log = LatencyLog(tmp_path / name, {}, flush_interval_s=0.02)
    assert log.health() == "log ok" and log._file.compressed == name.endswith(".zst")
    segment = log._file._file  # the segment file under the plain/zstd writer
    log._file._file = open("/dev/full", "wb", buffering=0)  # the disk is now full
    segment.close()
    for seq in range(500):
        log.put({"type": "loop", "seq": seq, "targets_rad": np.zeros(17)})
    deadline = time.monotonic() + 10
    while log.dropped < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.dropped == 500 and log._thread.is_alive()
    assert "No space left on device" in log.health() and "dropped 500" in log.health()
    log.put({"type": "loop", "seq": 500})
    log.close()  # must not raise: the run's shutdown goes on
    assert log.dropped == 501


def test_an_unserialisable_record_is_counted() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        log = LatencyLog(Path(d) / "l.log", {})
        log.put({"type": "loop", "obj": object()})
        log.put({"type": "loop", "seq": 1})
        log.close()
        assert log.dropped == 1 and "not JSON serialisable" in log.health()
        assert [r.get("seq") for r in _lines(Path(d) / "l.log")[1:]] == [1]


def test_run_summary_shows_dropped_log_records() -> None:
    from robotd.daemon.run import RunSummary

    fields = dict(duration_s=1.0, ticks=50, achieved_hz=50.0, target_hz=50.0, overruns=0, missed_slots=0,
                  packets_accepted=10, packets_rejected=0, falls=0, time_following_s=1.0, tick_us_p50=1.0,
                  tick_us_p99=1.0, tick_us_max=1.0, rx_to_tx_us_p50=1.0, rx_to_tx_us_p99=1.0, serial_bytes=0,
                  reconnects=0, policy_errors=0)
    assert not any("LOG" in line for line in RunSummary(**fields).lines())
    lines = RunSummary(**fields, log_records_dropped=7, log_error="No space left on device").lines()
    assert "LATENCY LOG INCOMPLETE: 7 records dropped (No space left on device)" in lines


def test_loop_lines_keep_measured_precision(tmp_path: Path) -> None:
    """Times to the ns, orientation and gyro at float32 (shortest decimal), the phone's readings
    exactly as received: what docs/latency-log.md "Precision" promises."""
    quat = np.array([0.9987871472607811, -0.012536663831286793, -0.010571254548420977, 0.046425371338575466])
    rx = [[10037.271391585, 3.82, "accel", [0.709279895390914, 9.885292, -0.9395620331075162]]]
    log = LatencyLog(tmp_path / "l.log", {})
    log.put({"type": "loop", "seq": 0, "t": 10037.2833091591234, "deadline": 10037.282818350084,
             "pkt_age_ms": 31.97837700099626, "stages_us": {"parse": None, "policy": 285.65700085891876},
             "tick_us": 520.1059993851231, "rx_to_tx_us": None, "quat": quat, "gyro": [0.021020838310585977, 0.0, 1.0],
             "action": [0.123456789012345], "rx": rx})
    log.event("fall", t=1.23456789012345)
    log.close()
    loop, event = _lines(tmp_path / "l.log")[1:3]
    assert loop["t"] == 10037.283309159 and loop["deadline"] == 10037.28281835 and loop["pkt_age_ms"] == 31.978377
    assert loop["stages_us"] == {"parse": None, "policy": 285.657} and loop["tick_us"] == 520.106
    assert np.array_equal(np.float32(loop["quat"]), np.float32(quat))  # float32 exactly ...
    assert loop["quat"][0] == 0.99878716 and loop["gyro"] == [0.021020839, 0.0, 1.0]  # ... in its shortest text
    assert loop["rx"] == rx and loop["action"] == [0.123456789012345]  # received and computed values unchanged
    assert event["t"] == 1.23456789012345  # only loop lines follow the loop's rules
