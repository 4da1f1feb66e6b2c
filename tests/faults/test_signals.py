"""Signals: SIGTERM/SIGINT end in the safe pose with a closed log; SIGKILL loses at most a flush interval."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, Rig, figure, pulses_of, streamer

from robotd.daemon.safety import SAFE_POSE_MOVE_MS
from sim.phone_stream import swaying_torso

FLUSH_INTERVAL_S = 0.1
TICK_S = 0.02


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_term_int_safe_pose_log_closed_exit_0(rig: Rig, emulator, sig: int) -> None:
    case = f"signal_{signal.Signals(sig).name}"
    d = rig.start(emulator.path)
    d.wait_listening()
    with streamer(d.udp_port) as phone:
        phone.start(swaying_torso(rig.cal.phone_to_torso))
        time.sleep(1.0)
        t_sig = d.send(sig)
        rc = d.proc.wait(timeout=10)
        t_exit = time.monotonic()
    moves = list(emulator.moves)
    last = moves[-1]
    summary = d.summary()
    figure(case, "exit_code", rc)
    figure(case, "signal_to_safe_pose_move_ms", round((last.received_s - t_sig) * 1e3, 1))
    figure(case, "signal_to_exit_ms", round((t_exit - t_sig) * 1e3, 1))
    assert rc == 0, d.stderr()
    assert last.time_ms == SAFE_POSE_MOVE_MS and last.pulses_us == pulses_of(rig.cal, rig.cal.safe_rad)
    assert last.received_s > t_sig
    assert summary is not None and summary["ticks"] > 40
    assert d.records()[-1]["type"] == "summary"  # the last line: log flushed and closed
    assert [e["event"] for e in d.events()][-1] == "signal"
    assert "followed the policy" in d.stdout()  # the summary printed on exit
    assert emulator.framing_errors == 0


def _sigkill_once(rig: Rig, emulator, run_s: float, name: str, log_suffix: str = ".log") -> float:
    d = rig.start(emulator.path, name=name, log_suffix=log_suffix)
    d.wait_listening()
    with streamer(d.udp_port) as phone:
        phone.start(swaying_torso(rig.cal.phone_to_torso))
        time.sleep(run_s)
        t_kill = d.send(signal.SIGKILL)
        assert d.proc.wait(timeout=10) == -signal.SIGKILL
    log = d.log()
    assert log.summary is None and log.n_ticks > 0
    assert log.segments[0].compressed == d.log_path.name.endswith(".zst")
    replay = subprocess.run([sys.executable, "-m", "robotd.cli", "replay", str(d.log_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert "ticks" in replay.stdout
    assert f"ends at tick seq {log.seq[-1]}" in replay.stdout  # says where the log stopped
    return t_kill - float(log.t_s[-1])


@pytest.mark.parametrize("log_suffix", [".log", ".log.zst"], ids=["plain", "zstd"])
def test_sigkill_log_readable_loses_at_most_a_flush_interval(rig: Rig, emulator, log_suffix: str) -> None:
    lost = _sigkill_once(rig, emulator, 1.37, "killed", log_suffix)
    figure(f"sigkill_{log_suffix.lstrip('.').replace('.', '_')}", "lost_s", round(lost, 3))
    # the last logged tick is at most one flush interval (plus the tick in progress) old
    assert lost <= FLUSH_INTERVAL_S + TICK_S + 0.01


@pytest.mark.slow
def test_sigkill_repeated(rig: Rig, emulator) -> None:
    losses = [_sigkill_once(rig, emulator, 1.0 + 0.037 * i, f"killed{i}") for i in range(10)]
    figure("sigkill_x10", "lost_s_max_median", (round(max(losses), 3), round(sorted(losses)[5], 3)))
    assert max(losses) <= FLUSH_INTERVAL_S + TICK_S + 0.01
