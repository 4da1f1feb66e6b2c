"""Flood and foreign senders: the phone socket under far more traffic than any phone sends.

* Flood: 20k datagrams/s of valid SensaGram from the allowed address. The loop keeps its
  rate (tick lateness, tick_us p99, missed deadlines), the daemon's memory stays bounded
  (RSS sampled over the run), and the newest data is still used (the logged torso pitch
  follows the streamed sway; packet age stays under the stale timeout).
* Foreign: the same flood, tilted far past the fall threshold, from 127.0.0.2 (not in
  ``--allow``): the board hears the start-up move and the shutdown move and nothing else.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from conftest import RATE_HZ, Rig, figure, lateness_ms, pct, rss_kb, udp_socket_drops

from robotd.commands.replay import torso_angles_rad


def _flood_case(rig: Rig, emulator, seconds: float, rate: float, case: str) -> None:
    d = rig.start(emulator.path)
    d.wait_listening()
    time.sleep(0.5)  # start-up move (300 ms) done, idle baseline for RSS
    rss_before = rss_kb(d.pid)
    flood = rig.flood(d.udp_port, rate, seconds)
    samples = []
    t_end = time.monotonic() + seconds + 5.0
    while flood.poll() is None and time.monotonic() < t_end:
        samples.append((time.monotonic(), rss_kb(d.pid)))
        time.sleep(0.1)
    result = rig.finish_flood(flood)
    time.sleep(0.3)
    rss_after = rss_kb(d.pid)
    drops = udp_socket_drops(d.udp_port)
    assert d.alive(), d.stderr()
    assert d.stop(signal.SIGTERM) == 0, d.stderr()
    log = d.log()
    summary = log.summary
    assert summary is not None

    sent, t0, t1 = result["sent"], result["start"], result["end"]
    achieved = sent / (t1 - t0)
    during = (log.t_s > t0 + 0.2) & (log.t_s < t1)
    n_during = int(during.sum())
    tick_rate = (n_during - 1) / (log.t_s[during][-1] - log.t_s[during][0])
    late = lateness_ms(log, during)
    tick = log.tick_us[during]
    overruns = int(log.has_flag("overrun")[during].sum())
    age = log.pkt_age_ms[during]
    rss = np.array([kb for _, kb in samples])
    # Newest data used: the streamed pitch at the tick (sway 8.6 deg at 0.5 Hz, phone clock
    # = send time) against the pitch the daemon logged for that tick.
    pitch_logged = np.degrees(torso_angles_rad(log.quat_wxyz[during])[0])
    running = log.mode_is("run")[during]

    figure(case, "datagrams_sent", sent)
    figure(case, "send_rate_per_s", round(achieved))
    figure(case, "accepted", summary["packets_accepted"])
    figure(case, "kernel_socket_drops", drops)
    figure(case, "tick_rate_hz", round(tick_rate, 2))
    figure(case, "lateness_ms_p50_p99_max", (round(pct(late, 50), 2), round(pct(late, 99), 2), round(float(late.max()), 2)))
    figure(case, "tick_us_p50_p99", (round(pct(tick, 50)), round(pct(tick, 99))))
    figure(case, "overruns_during_flood", overruns)
    figure(case, "pkt_age_ms_p50_p99_max", (round(pct(age, 50), 1), round(pct(age, 99), 1), round(float(np.nanmax(age)), 1)))
    figure(case, "rss_kb_before_peak_after", (rss_before, int(rss.max()), rss_after))
    figure(case, "logged_pitch_deg_range", (round(float(np.nanmin(pitch_logged)), 2), round(float(np.nanmax(pitch_logged)), 2)))

    assert sent >= 0.8 * rate * seconds, result
    # every datagram accounted for: what the daemon took plus what the kernel dropped
    assert summary["packets_accepted"] + summary["packets_rejected"] + summary["packets_stale"] + \
        summary["packets_ignored"] + drops == sent, (summary, drops)
    assert tick_rate == pytest.approx(RATE_HZ, rel=0.03)
    assert pct(late, 99) < 10.0 and overruns <= max(2, n_during // 100)
    assert pct(tick, 99) < 5000
    # newest data: age stays well under the 150 ms stale timeout, the robot keeps following
    assert pct(age, 99) < 100 and running.mean() > 0.95
    # the logged pitch spans the sway (+-8.6 deg), so the snapshot follows the stream
    assert np.nanmax(pitch_logged) > 6 and np.nanmin(pitch_logged) < -6
    # bounded memory: growth during the flood stays small (log queue, reading deque are bounded)
    assert rss.max() - rss_before < 40_000, (rss_before, rss.max())
    assert emulator.framing_errors == 0


def test_flood_20k_per_s_short(rig: Rig, emulator) -> None:
    _flood_case(rig, emulator, seconds=2.0, rate=20_000, case="flood_ci")


@pytest.mark.slow
def test_flood_20k_per_s_10s(rig: Rig, emulator) -> None:
    _flood_case(rig, emulator, seconds=10.0, rate=20_000, case="flood_10s")


def test_foreign_sender_never_moves_a_servo(rig: Rig, emulator) -> None:
    """20k/s of valid, tilted (fall-provoking) packets from 127.0.0.2; only 127.0.0.1 is allowed."""
    case = "foreign"
    d = rig.start(emulator.path, allow="127.0.0.1")
    d.wait_listening()
    flood = rig.flood(d.udp_port, 20_000, 2.0, source="127.0.0.2", pitch_deg=60.0)
    result = rig.finish_flood(flood)
    time.sleep(0.2)
    drops = udp_socket_drops(d.udp_port)
    assert d.stop(signal.SIGTERM) == 0, d.stderr()
    s = d.summary()
    moves = list(emulator.moves)
    figure(case, "datagrams_sent", result["sent"])
    figure(case, "foreign_counted_plus_kernel_drops", (s["packets_foreign"], drops))
    figure(case, "moves", [m.time_ms for m in moves])
    assert [m.time_ms for m in moves] == [300, 800]  # start-up move, shutdown move: nothing else
    assert s["packets_accepted"] == 0 and s["falls"] == 0
    assert s["packets_foreign"] + drops == result["sent"]
    assert emulator.framing_errors == 0
