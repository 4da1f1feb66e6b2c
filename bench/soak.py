"""Soak: the real daemon at 50 Hz for a long run with a live phone stream against the emulator.

Starts ``robotd board-emulator`` (own process) and ``robotd run`` (own process), streams a
swaying torso over loopback UDP at 100 Hz from this process, samples the daemon's RSS every
``--rss-every`` seconds, then stops the daemon with SIGTERM and reads its latency log.

    python bench/soak.py                 # 30 minutes
    python bench/soak.py --minutes 3     # shortened

Prints: ticks, achieved rate, missed deadlines (overruns) against the budget
(``--miss-budget``, fraction of ticks), tick lateness and tick_us percentiles, RSS samples
(first, last, max, slope over the second half), log bytes per hour, and the emulator's
summary (framing errors must be 0). Exits 1 when a budget is exceeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from calibration import load_calibration
from robotd.logs.logread import read_log
from sim.phone_stream import PhoneStreamer, swaying_torso

REPO = Path(__file__).resolve().parents[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rss-every", type=float, default=10.0, metavar="S")
    p.add_argument("--miss-budget", type=float, default=0.001, help="allowed overruns as a fraction of ticks")
    p.add_argument("--rss-growth-budget-kb", type=float, default=2048.0,
                   help="allowed RSS growth from the first sample after warm-up to the last")
    p.add_argument("--keep", metavar="DIR", help="keep the log in DIR")
    args = p.parse_args()
    seconds = args.minutes * 60.0
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "soak.log"
    cal = load_calibration()
    port = 40000 + os.getpid() % 20000

    emulator = subprocess.Popen([sys.executable, "-m", "robotd.cli", "board-emulator", "--summary-s", "60"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    pty_path = emulator.stdout.readline().split()[3]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "robotd.cli", "run", "--port", pty_path, "--udp", f"127.0.0.1:{port}",
         "--phone-format", "sensagram", "--allow", "127.0.0.1", "--policy", "pd", "--rate", "50",
         "--log", str(log_path), "--duration", str(seconds + 120)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    streamer = PhoneStreamer(("127.0.0.1", port), "sensagram", rate_hz=100.0)
    rss: list[tuple[float, int]] = []
    try:
        time.sleep(1.0)
        streamer.start(swaying_torso(cal.phone_to_torso), duration_s=seconds)
        t0 = time.monotonic()
        next_sample = t0
        while time.monotonic() - t0 < seconds:
            if daemon.poll() is not None:
                print(f"daemon exited early with {daemon.returncode}", file=sys.stderr)
                return 1
            if time.monotonic() >= next_sample:
                rss.append((time.monotonic() - t0, rss_kb(daemon.pid)))
                next_sample += args.rss_every
            time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
        t1 = time.monotonic()
        streamer.stop()
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=30)
    finally:
        streamer.close()
        for proc in (daemon, emulator):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
    emulator_out = emulator.stdout.read().strip().splitlines()
    log = read_log(log_path)
    window = (log.t_s > t0 + 2.0) & (log.t_s < t1)
    late_ms = (log.t_s - log.deadline_s)[window] * 1e3
    tick = log.tick_us[window]
    overruns = int(log.has_flag("overrun")[window].sum())
    n = int(window.sum())
    size = log_path.stat().st_size
    hours = (t1 - t0) / 3600.0
    samples = np.array(rss, dtype=float)
    half = samples[samples[:, 0] >= samples[-1, 0] / 2]
    slope = float(np.polyfit(half[:, 0], half[:, 1], 1)[0]) * 60.0 if len(half) >= 3 else math.nan
    warm = samples[samples[:, 0] >= 30.0] if samples[-1, 0] > 60 else samples
    growth = float(warm[-1, 1] - warm[0, 1])
    result = {
        "minutes": round((t1 - t0) / 60.0, 2),
        "ticks": n,
        "achieved_hz": round((n - 1) / (log.t_s[window][-1] - log.t_s[window][0]), 3),
        "overruns": overruns,
        "overrun_fraction": overruns / n,
        "missed_slots_total": (log.summary or {}).get("missed_slots"),
        "lateness_ms_p50_p99_p999_max": [round(float(np.percentile(late_ms, q)), 2) for q in (50, 99, 99.9)]
        + [round(float(late_ms.max()), 2)],
        "tick_us_p50_p99_max": [round(float(np.percentile(tick, q))) for q in (50, 99)] + [round(float(tick.max()))],
        "run_fraction": round(float(log.mode_is("run")[window].mean()), 4),
        "rss_kb_first_last_max": [int(samples[0, 1]), int(samples[-1, 1]), int(samples[:, 1].max())],
        "rss_growth_after_warmup_kb": growth,
        "rss_slope_second_half_kb_per_min": round(slope, 1),
        "log_bytes": size,
        "log_mb_per_hour": round(size / hours / 1e6, 1),
        "emulator": emulator_out[-1] if emulator_out else None,
        "daemon_summary": out.strip().splitlines(),
        "log": str(log_path),
    }
    print(json.dumps(result, indent=2))
    ok = overruns <= args.miss_budget * n and growth <= args.rss_growth_budget_kb and \
        "framing_errors=0" in (result["emulator"] or "")
    print("PASS" if ok else "FAIL: budget exceeded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
