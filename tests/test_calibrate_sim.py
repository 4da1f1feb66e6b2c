"""robotd calibrate end to end: against --port sim (the simulated robot process) and, for the
terminal front end, as a real process on a pty against the board emulator."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from robotd.calibrate import main
from sim.board_emulator import BoardEmulator
from tests.daemon_harness import free_udp_port


def quick_calibration(directory: Path, dead_time_ms: float = 100.0) -> Path:
    path = directory / "robot.toml"
    path.write_text(DEFAULT_CALIBRATION_PATH.read_text()
                    .replace("startup_move_ms = 2000", "startup_move_ms = 300")
                    .replace("dead_time_ms = 100.0", f"dead_time_ms = {dead_time_ms}"))
    return path


def run_main(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def test_latency_probe_recovers_the_simulated_dead_time(tmp_path: Path) -> None:
    """The simulator's servos have 120 ms dead time (from the calibration); the probe must find it
    within 20 ms. (The sim board applies moves once per 10 ms physics chunk, ~5 ms on average.)"""
    cal_path = quick_calibration(tmp_path, dead_time_ms=120.0)
    rc, out = run_main(["latency", "--port", "sim", "--calibration", str(cal_path),
                        "--udp", f"127.0.0.1:{free_udp_port()}"])
    assert rc == 0, out
    timing = load_calibration(cal_path).servo_timing
    assert timing.dead_time_ms == pytest.approx(120.0, abs=20.0), out
    assert 60.0 < timing.response_ms < 300.0, out
    assert "8/8 steps" in out or "7/8 steps" in out, out
    backups = list(tmp_path.glob("robot.toml.bak-*"))
    assert len(backups) == 1 and "dead_time_ms = 120.0" in backups[0].read_text()


def test_imu_zero_finds_the_simulated_mount_error_and_bias(tmp_path: Path) -> None:
    cal_path = quick_calibration(tmp_path)
    before = load_calibration(cal_path)
    error_deg = np.array([2.0, -1.5, 1.0])  # phone frame; the y part is a heading error (unobservable)
    bias = np.array([0.01, -0.02, 0.03])
    rc, out = run_main(["imu", "--port", "sim", "--calibration", str(cal_path), "--udp",
                        f"127.0.0.1:{free_udp_port()}", "--seconds", "3",
                        "--sim-mount-error-deg", ",".join(map(str, error_deg)),
                        "--sim-gyro-bias", ",".join(map(str, bias))])
    assert rc == 0, out
    after = load_calibration(cal_path)
    p_true = before.phone_to_torso @ Rotation.from_rotvec(np.radians(error_deg)).as_matrix()
    up_true = p_true.T @ [0.0, 0.0, 1.0]  # where the phone really sees "up" when the torso is upright
    up_new = after.phone_to_torso.T @ [0.0, 0.0, 1.0]
    tilt_error_deg = np.degrees(np.arccos(np.clip(up_true @ up_new, -1, 1)))
    # The simulated robot stands within ~0.3 deg of upright; the tilt it has is calibrated in.
    assert tilt_error_deg < 0.75, out
    untouched_deg = np.degrees(np.arccos(np.clip((before.phone_to_torso.T @ [0, 0, 1]) @ up_true, -1, 1)))
    assert untouched_deg > 2.0  # the error was real
    correction = Rotation.from_matrix(after.phone_to_torso @ before.phone_to_torso.T).as_rotvec()
    assert abs(correction[2]) < 1e-6  # tilt only: the heading convention is kept
    np.testing.assert_allclose(after.gyro_bias_rad_s, bias, atol=0.01)
    assert len(list(tmp_path.glob("robot.toml.bak-*"))) == 1


def test_trim_scripted_from_a_pipe_against_sim(tmp_path: Path) -> None:
    cal_path = quick_calibration(tmp_path)
    keys = "n" + "+++" + "c" + "d" + "]]" + "++" + "h" + "s" + "q"
    proc = subprocess.run(
        [sys.executable, "-m", "robotd.cli", "calibrate", "trim", "--port", "sim", "--calibration", str(cal_path)],
        input=keys, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saved r_shoulder_pitch" in proc.stdout
    joint = load_calibration(cal_path).joint("r_shoulder_pitch")
    # Centre 1500 + 3 x 10; then the step goes 10 -> 20 -> 50 and two more presses set the max.
    assert (joint.neutral_us, joint.direction, joint.min_us, joint.max_us) == (1530, -1, 600, 1630)
    assert len(list(tmp_path.glob("robot.toml.bak-*"))) == 1


def read_until(fd: int, text: bytes, timeout_s: float) -> bytes:
    """What a terminal shows on the master side of a pty, up to ``text`` (the program's prompt)."""
    seen = b""
    deadline_s = time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline_s:
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 4096)
    return seen


@pytest.mark.parametrize(("sig", "inherited"), [(signal.SIGINT, signal.SIG_DFL), (signal.SIGINT, signal.SIG_IGN),
                                                (signal.SIGTERM, signal.SIG_DFL)],
                         ids=["ctrl-c", "ctrl-c-started-in-the-background", "sigterm"])
def test_trim_on_a_terminal_sends_the_safe_pose_on_ctrl_c(tmp_path: Path, sig: signal.Signals,
                                                          inherited: signal.Handlers) -> None:
    """Ctrl-C (cbreak mode keeps ISIG: the key is a SIGINT) or SIGTERM ends trim at once with the
    safe pose of the joint it moved, through the calibration as saved. Also when trim inherits
    SIGINT ignored, as a shell without job control starts every background command (and so
    every child of a test run started with ``&``): that is what made this test time out in full
    runs while it passed alone in the foreground."""
    cal_path = quick_calibration(tmp_path)
    cal = load_calibration(cal_path)
    master, slave = pty.openpty()
    with BoardEmulator() as emulator:
        previous = signal.signal(signal.SIGINT, inherited)  # SIG_IGN survives fork and exec
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "robotd.cli", "calibrate", "trim", "--port", emulator.path,
                 "--calibration", str(cal_path), "--step", "5"],
                stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
        finally:
            signal.signal(signal.SIGINT, previous)
        os.close(slave)
        try:
            # The status line comes after cbreak mode is on: keys typed earlier are flushed
            # (on a loaded machine a fixed sleep after the start-up move was not always enough).
            screen = read_until(master, b"neck_yaw", 30.0)
            assert b"neck_yaw" in screen, screen
            os.write(master, b"\x1b[A\x1b[A")  # arrow up twice: neck 1500 -> 1510
            assert emulator.wait_for(lambda em: em.latest_pulse_us.get(1) == 1510, 5.0), emulator.summary()
            sent_s = time.monotonic()
            proc.send_signal(sig)
            assert proc.wait(10) == 130
            assert time.monotonic() - sent_s < 2.0  # "within a second or two"
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
        moves = list(emulator.moves)
        assert emulator.framing_errors == 0
    # Only the joint being trimmed ever moved: its first jog slowly (from an unknown pose), and
    # the way out sends its safe pose through the calibration as saved (nothing was saved).
    assert all(list(m.pulses_us) == [1] for m in moves), moves
    assert moves[0].pulses_us == {1: 1505} and moves[0].time_ms == cal.startup_move_ms
    neck = cal.joint("neck_yaw")
    assert moves[-1].pulses_us == {1: round(neck.angle_to_pulse(cal.safe_rad[cal.index("neck_yaw")]))}
    assert moves[-1].time_ms == 800
    assert not list(tmp_path.glob("*.bak-*"))  # nothing saved
