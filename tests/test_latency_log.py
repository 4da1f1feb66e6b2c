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

from robotd.latency_log import LOG_SCHEMA_VERSION, LatencyLog


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
    worst_s = 0.0
    for seq in range(2000):
        t = time.perf_counter()
        log.put({"type": "loop", "seq": seq, "targets_rad": np.zeros(17)})
        worst_s = max(worst_s, time.perf_counter() - t)
    assert worst_s < 0.01
    time.sleep(0.35)  # > flush interval + writer wake-up: everything is on disk without close()
    assert len(_lines(path)) == 2001
    log.close()


_KILLED_WRITER = """
import sys, time
from robotd.latency_log import LatencyLog
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
