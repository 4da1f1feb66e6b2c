"""robotd calibrate without the simulator: TOML editing, Safety.jog, the trim state machine,
IMU-zero and latency-analysis maths on synthetic data."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from calibration import DEFAULT_CALIBRATION_PATH, CalibrationError, load_calibration
from calibration.toml_edit import dumps, read_document, save_document, with_imu, with_joint, with_servo_timing
from robotd.calibrate.imu import compute_imu_zero, smallest_rotation
from robotd.calibrate.latency import analyse_probe, analyse_step
from robotd.calibrate.trim import STEP_SIZES_US, Jog, Message, Quit, Save, TrimSession, run_keys, split_keys
from robotd.board.link import SerialLink
from robotd.daemon.safety import Safety
from sim.board_emulator import BoardEmulator
from sim.rotations import rotvec_to_quat

CAL = load_calibration()


@pytest.fixture
def cal_file(tmp_path: Path) -> Path:
    path = tmp_path / "robot.toml"
    path.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("startup_move_ms = 2000", "startup_move_ms = 300"))
    return path


# ----------------------------------------------------------------------------- TOML


def test_round_trip_keeps_values_and_comments() -> None:
    doc, text = read_document(DEFAULT_CALIBRATION_PATH)
    out = dumps(doc, text)
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    assert [line for line in out.splitlines() if line.strip().startswith("#")] == comments
    import tomllib

    assert tomllib.loads(out) == doc
    assert "axis = [0.0, 0.0, 1.0]" in out  # number arrays stay on one line


def test_a_saved_mount_matrix_stays_on_one_line(cal_file: Path) -> None:
    """docs/calibration.md: number arrays are back on one line after a save, the 3x3 too."""
    doc, text = read_document(cal_file)
    save_document(cal_file, with_imu(doc, [[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.01, 0.0, 0.0]),
                  original_text=text)
    saved = cal_file.read_text()
    assert "phone_to_torso = [[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]\n" in saved
    assert "gyro_bias_rad_s = [0.01, 0.0, 0.0]\n" in saved
    assert not any(line.strip() in ("[", "]") for line in saved.splitlines())


def test_save_validates_backs_up_and_replaces(cal_file: Path) -> None:
    doc, text = read_document(cal_file)
    result = save_document(cal_file, with_joint(doc, "r_knee", neutral_us=1512.4, min_us=1410), original_text=text,
                           stamp="20250101-000000")
    assert result.backup_path == cal_file.with_name("robot.toml.bak-20250101-000000")
    assert result.backup_path.read_text() == text
    knee = load_calibration(cal_file).joint("r_knee")
    assert (knee.neutral_us, knee.min_us, knee.max_us) == (1512, 1410, 2450)
    # A second save in the same second never overwrites the first backup.
    second = save_document(cal_file, with_servo_timing(doc, 123.45, 150), stamp="20250101-000000")
    assert second.backup_path.name == "robot.toml.bak-20250101-000000-1"
    assert load_calibration(cal_file).servo_timing.dead_time_ms == pytest.approx(123.5)


def test_invalid_result_is_refused_and_file_untouched(cal_file: Path) -> None:
    before = cal_file.read_text()
    doc, text = read_document(cal_file)
    bad = with_joint(doc, "r_knee", neutral_us=1300)  # below min_us 1400
    with pytest.raises(CalibrationError, match="neutral_us"):
        save_document(cal_file, bad, original_text=text)
    assert cal_file.read_text() == before
    assert list(cal_file.parent.iterdir()) == [cal_file]  # no backup, no temp file left


def test_imu_values_written(cal_file: Path) -> None:
    doc, text = read_document(cal_file)
    p = smallest_rotation(np.array([0.0, 0.05, 1.0]), np.array([0, 0, 1.0])) @ CAL.phone_to_torso
    save_document(cal_file, with_imu(doc, p.tolist(), [0.01, -0.02, 0.003]), original_text=text)
    cal = load_calibration(cal_file)
    np.testing.assert_allclose(cal.phone_to_torso, p, atol=1e-8)
    np.testing.assert_allclose(cal.gyro_bias_rad_s, [0.01, -0.02, 0.003])


# ----------------------------------------------------------------------------- Safety.jog


@pytest.fixture
def board() -> Iterator[tuple[Safety, BoardEmulator]]:
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), 50.0)
        safety.open()
        yield safety, emulator
        safety.shutdown()


def moves(emulator: BoardEmulator, n: int) -> list:
    assert emulator.wait_for(lambda em: em.moves_received >= n, 2.0), emulator.summary()
    return list(emulator.moves)


def test_jog_first_moves_everything_slowly_then_one_channel(board) -> None:
    safety, emulator = board
    first = safety.jog({})
    assert first.mode == "jog" and len(first.pulses_us) == 17
    start = moves(emulator, 1)[0]
    nominal = dict(zip(CAL.channels.tolist(), np.rint(CAL.angles_to_pulses(CAL.nominal_rad)).astype(int).tolist()))
    assert start.time_ms == CAL.startup_move_ms and start.pulses_us == nominal
    knee = CAL.joint("r_knee")
    safety.jog({knee.channel: nominal[knee.channel] + 3})  # below the deadband: still sent
    move = moves(emulator, 2)[1]
    assert move.pulses_us == {knee.channel: nominal[knee.channel] + 3}


def test_jog_clamps_to_limits_and_slew_limits(board) -> None:
    safety, emulator = board
    safety.jog({})
    knee = CAL.joint("r_knee")
    result = safety.jog({knee.channel: 3000})
    assert "clamped" in result.flags and result.pulses_us == {knee.channel: int(knee.max_us)}
    move = moves(emulator, 2)[1]
    nominal_us = knee.angle_to_pulse(CAL.nominal_rad[CAL.index("r_knee")])
    travel_rad = (knee.max_us - round(nominal_us)) / knee.us_per_rad
    assert move.time_ms == math.ceil(travel_rad / CAL.safety.max_slew_rad_s * 1000)
    # Operator limits replace the calibrated ones, but never beyond 500..2500.
    safety.jog({knee.channel: 2600}, limits_us={knee.channel: (1400, 2700)})
    assert moves(emulator, 3)[2].pulses_us == {knee.channel: 2500}
    with pytest.raises(ValueError):
        safety.jog({99: 1500})
    with pytest.raises(ValueError):
        safety.jog({knee.channel: float("nan")})


def test_jog_converts_angles_and_pulses_by_the_calibration_alone(board, monkeypatch) -> None:
    """Jog keeps no angle <-> pulse map of its own: with the calibration's conversions shifted
    by 7 us, the pulses jog sends for the commanded pose shift with them."""
    safety, emulator = board
    cls = type(CAL)
    unlimited, to_angles = cls.unlimited_pulses, cls.pulses_to_angles
    monkeypatch.setattr(cls, "unlimited_pulses", lambda self, angles: unlimited(self, angles) + 7.0)
    monkeypatch.setattr(cls, "pulses_to_angles", lambda self, pulses: to_angles(self, np.asarray(pulses) - 7.0))
    first = safety.jog({})
    nominal = np.rint(CAL.neutral_us + CAL.signed_us_per_rad * CAL.nominal_rad + 7.0)
    assert first.pulses_us == dict(zip(CAL.channels.tolist(), nominal.astype(int).tolist()))
    np.testing.assert_allclose(safety.commanded_rad, to_angles(CAL, nominal - 7.0))


def test_jog_ignores_stale_and_fall_state(board) -> None:
    safety, emulator = board
    safety.jog({})
    neck = CAL.joint("neck_yaw")
    # No phone at all (the daemon would hold): the operator's jog still goes out.
    assert safety.jog({neck.channel: 1600}).pulses_us == {neck.channel: 1600}
    safety.shutdown()
    safe = moves(emulator, 3)[-1]
    assert safe.time_ms is not None and len(safe.pulses_us) == 17


# ----------------------------------------------------------------------------- trim state machine


def test_trim_keys_move_within_limits() -> None:
    s = TrimSession.from_calibration(CAL, step_us=50)
    s.index = CAL.index("r_hip_roll")  # limits 1200..1800, nominal 1500
    jogs = [e for k in "+" * 10 for e in s.handle_key(k) if isinstance(e, Jog)]
    assert [j.pulse_us for j in jogs] == [1550, 1600, 1650, 1700, 1750, 1800]  # then clamped, nothing sent
    assert any(isinstance(e, Message) and "max limit" in e.text for e in s.handle_key("+"))
    assert s.handle_key("H") == [Message("widening a limit needs --allow-widen")]
    assert s.joint.max_us == 1800
    for key in "-" * 20:
        for e in s.handle_key(key):
            if isinstance(e, Jog):
                assert 1200 <= e.pulse_us <= 1800
    assert s.joint.pulse_us == 1200


def test_trim_widen_is_explicit_capped_and_per_press_limited() -> None:
    s = TrimSession.from_calibration(CAL, step_us=50, allow_widen=True)
    s.index = CAL.index("l_knee")  # limits 550..1600
    s.handle_key("]")  # already the largest step
    assert s.step_us == STEP_SIZES_US[-1] == 50
    effects = s.handle_key("L")
    assert s.joint.min_us == 500 and Jog(15, 500, 500, 1600) in effects  # 550 - 50, the hard cap
    assert "hard cap" in s.handle_key("L")[0].text and s.joint.min_us == 500
    effects = s.handle_key("H")
    assert s.joint.max_us == 1650 and Jog(15, 1650, 500, 1650) in effects


def test_trim_centre_direction_limits_and_quit() -> None:
    s = TrimSession.from_calibration(CAL, step_us=10)
    assert s.joint.name == "neck_yaw" and s.joint.pulse_us == 1500
    for key in "+++c":
        s.handle_key(key)
    assert s.joint.neutral_us == 1530 and s.dirty
    s.handle_key("d")
    assert s.joint.direction == -1
    for key in "-----":
        s.handle_key(key)
    assert s.handle_key("h")[0].text.startswith("neck_yaw: max limit must not be below the centre")
    s.handle_key("l")
    assert s.joint.min_us == 1480
    s.handle_key("n")
    assert s.joint.name == "r_shoulder_pitch"
    s.handle_key("p")
    assert "unsaved" in s.handle_key("q")[0].text  # first q warns
    assert s.handle_key("q") == [Quit()]
    assert s.handle_key("s") == [Save()]
    s.handle_key("r")
    assert s.joint.values == s.joint.saved


def test_split_keys() -> None:
    assert split_keys("n\x1b[A\x1b[B+\t\x03 x") == ["n", "up", "down", "+", "tab", "ctrl-c", "x"]


def test_trim_against_emulator_saves_and_sends_within_limits(board, cal_file: Path) -> None:
    safety, emulator = board
    cal = load_calibration(cal_file)
    safety.jog({})
    s = TrimSession.from_calibration(cal, step_us=10, start_joint="r_ankle_roll")  # 1250..1750, ch 12
    said: list[str] = []
    run_keys(s, safety, str(cal_file), list("++++c" + "]]" + "+" * 30 + "h" + "-" * 60 + "l" + "z" + "s" + "q"),
             say=said.append)
    assert any(text.startswith("saved r_ankle_roll") for text in said), said
    saved = load_calibration(cal_file).joint("r_ankle_roll")
    assert (saved.neutral_us, saved.direction, saved.min_us, saved.max_us) == (1540, 1, 1250, 1750)
    assert emulator.wait_for(lambda em: em.latest_pulse_us.get(12) == 1540, 2.0)
    ch12 = [m.pulses_us[12] for m in list(emulator.moves)[1:] if 12 in m.pulses_us]
    assert min(ch12) == 1250 and max(ch12) == 1750
    assert emulator.framing_errors == 0
    assert sorted(p.name for p in cal_file.parent.iterdir())[0] == "robot.toml"
    assert len(list(cal_file.parent.glob("robot.toml.bak-*"))) == 1


def test_jog_alone_sends_only_the_named_channel_and_its_first_move_slowly(board) -> None:
    safety, emulator = board
    knee, neck = CAL.joint("r_knee"), CAL.joint("neck_yaw")
    safety.jog({knee.channel: 1510}, alone=True)
    safety.jog({knee.channel: 1520}, alone=True)
    safety.jog({neck.channel: 1500}, alone=True)
    first, second, third = moves(emulator, 3)
    assert [first.pulses_us, second.pulses_us, third.pulses_us] == [{knee.channel: 1510}, {knee.channel: 1520},
                                                                    {neck.channel: 1500}]
    assert first.time_ms == third.time_ms == CAL.startup_move_ms  # each from an unknown pose
    assert second.time_ms == math.ceil(10 / knee.us_per_rad / CAL.safety.max_slew_rad_s * 1000)
    safety.shutdown(commanded_only=True)
    safe = moves(emulator, 4)[3]
    assert set(safe.pulses_us) == {knee.channel, neck.channel} and safe.time_ms == 800


def test_center_moves_one_servo_at_a_time_to_1500_and_leaves_them_there(cal_file: Path, capsys) -> None:
    from robotd.calibrate import main

    with BoardEmulator() as emulator:
        rc = main(["center", "--port", emulator.path, "--calibration", str(cal_file)])
        sent = moves(emulator, 17)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert [m.pulses_us for m in sent] == [{channel: 1500} for channel in CAL.channels.tolist()]  # no safe pose after
    assert all(m.time_ms == 300 for m in sent)  # the calibration's startup_move_ms: from an unknown pose
    # The next servo starts only once the previous one's timed move is over.
    assert all(b.received_s - a.received_s >= 0.25 for a, b in zip(sent, sent[1:]))
    assert "every servo holds 1500 us" in out
    assert list(cal_file.parent.iterdir()) == [cal_file]  # saves nothing, backs up nothing


def test_trim_moves_one_joint_per_frame_and_quits_through_the_saved_calibration(cal_file: Path) -> None:
    """No start-up move of all 17 joints: each frame carries the one joint being trimmed (its first
    jog slow, from an unknown pose); quitting sends the safe pose of the joints the session moved,
    through the file as saved (r_knee's new centre), not the calibration trim started with."""
    from robotd.calibrate import build_parser, run_trim

    knee, ankle = CAL.joint("r_knee"), CAL.joint("r_ankle_pitch")
    with BoardEmulator() as emulator:
        args = build_parser().parse_args(["trim", "--port", emulator.path, "--calibration", str(cal_file),
                                          "--joint", "r_knee"])
        run_trim(args, load_calibration(cal_file), out=io.StringIO(), keys=list("++cs" + "n-" + "q"))
        sent = moves(emulator, 4)
    assert [m.pulses_us for m in sent[:-1]] == [{knee.channel: 1510}, {knee.channel: 1520}, {ankle.channel: 1490}]
    assert [m.time_ms for m in sent[:-1]][::2] == [300, 300]  # each joint's first jog
    saved = load_calibration(cal_file)
    assert saved.joint("r_knee").neutral_us == 1520
    safe = {saved.joint(name).channel: round(saved.joint(name).angle_to_pulse(saved.safe_rad[saved.index(name)]))
            for name in ("r_knee", "r_ankle_pitch")}
    assert sent[-1].pulses_us == safe and sent[-1].time_ms == 800
    assert safe[knee.channel] == 1520 + round(knee.us_per_rad * saved.safe_rad[saved.index("r_knee")])


def test_trim_save_refused_when_the_pose_leaves_the_limits(board, cal_file: Path) -> None:
    safety, _ = board
    s = TrimSession.from_calibration(load_calibration(cal_file), step_us=50, start_joint="r_knee")
    # The nominal knee angle (0.5 rad) sits at 1819 us; a max limit at the centre excludes it.
    said: list[str] = []
    run_keys(s, safety, str(cal_file), list("z" + "h" + "s"), say=said.append)
    assert said[-1].startswith("NOT saved") and "poses" in said[-1]
    assert not list(cal_file.parent.glob("*.bak-*"))


# ----------------------------------------------------------------------------- IMU zero maths


def test_imu_zero_recovers_tilt_and_keeps_heading() -> None:
    rng = np.random.default_rng(1)
    p = CAL.phone_to_torso
    error = rotvec_to_quat(np.radians([2.0, -1.5, 1.0]))
    from scipy.spatial.transform import Rotation

    e = Rotation.from_quat(error, scalar_first=True).as_matrix()
    p_true = p @ e  # the phone frame really sits turned by e
    up_phone = p_true.T @ [0.0, 0.0, 1.0]
    accel = 9.81 * up_phone + rng.normal(0, 0.05, (300, 3))
    gyro = np.array([0.01, -0.02, 0.03]) + rng.normal(0, 0.03, (300, 3))
    z = compute_imu_zero(p, accel, gyro)
    np.testing.assert_allclose(z.phone_to_torso @ up_phone, [0, 0, 1], atol=1e-3)
    c = z.phone_to_torso @ p.T  # the correction: a rotation about a horizontal axis only
    axis = Rotation.from_matrix(c).as_rotvec()
    assert abs(axis[2]) < 1e-9
    np.testing.assert_allclose(z.gyro_bias_rad_s, [0.01, -0.02, 0.03], atol=0.006)
    assert z.still and z.correction_deg == pytest.approx(math.degrees(np.linalg.norm(axis)), abs=1e-6)


# ----------------------------------------------------------------------------- latency maths


def _servo_gyro(t: np.ndarray, t_move: float, rng: np.random.Generator) -> np.ndarray:
    """Torso rate of a step starting at t_move: torque-limited (linear) rise to 1.2 rad/s in 80 ms,
    back to rest at 200 ms, then a smaller rebound; gyro bias 0.02 and noise."""
    x = t - t_move
    rate = np.interp(x, [0.0, 0.08, 0.2, 0.3, 0.4], [0.0, 1.2, 0.0, -0.5, 0.0], left=0.0, right=0.0)
    axis = np.array([0.6, 0.8, 0.0])
    return rate[:, None] * axis + 0.02 + rng.normal(0, 0.02, (len(t), 3))


def test_analyse_step_finds_onset_and_response() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(0, 1.0, 0.01)
    r = analyse_step(0.3, t, _servo_gyro(t, 0.42, rng))
    assert r.detected
    assert r.dead_ms == pytest.approx(120, abs=5)
    # 90 % of the first lobe's rotation (0.12 rad) is reached 152 ms after the onset.
    assert r.response_ms == pytest.approx(152, abs=8)
    quiet = analyse_step(0.3, t, 0.02 + rng.normal(0, 0.02, (len(t), 3)))
    assert not quiet.detected and "never" in quiet.reason


def test_analyse_probe_uses_phone_clock_not_arrival() -> None:
    """Packets arrive 10-60 ms late at random; the phone timestamps keep the answer unbiased."""
    rng = np.random.default_rng(3)
    phone_t = np.arange(0, 8.0, 0.01)
    commands = [(1.0 + i + 100.0, 1 if i % 2 == 0 else -1) for i in range(6)]  # local clock = phone + 100
    gyro = sum(_servo_gyro(phone_t, c[0] - 100.0 + 0.12, rng) - 0.02 for c in commands) + 0.02
    arrival = phone_t + 100.0 + rng.uniform(0.010, 0.060, len(phone_t))
    arrival[::50] = phone_t[::50] + 100.0  # a few fast packets pin the offset
    result = analyse_probe(commands, arrival, phone_t, gyro)
    assert len(result.detected) == 6
    assert result.dead_ms == pytest.approx(120, abs=5)
    later = analyse_probe(commands, arrival + 0.004, phone_t, gyro, min_latency_s=0.004)
    assert later.dead_ms == pytest.approx(result.dead_ms, abs=1e-6)
    untimed = analyse_probe(commands, arrival, np.full(len(phone_t), np.nan), gyro)
    assert "arrival" in untimed.timing and untimed.dead_ms - 120 > abs(result.dead_ms - 120) + 5


def test_trim_dry_run_never_saves(cal_file: Path) -> None:
    """`robotd calibrate trim --dry-run`: keys from a pipe change a joint and press s; the file
    stays byte for byte, no backup appears, and the tool says it did not save."""
    import subprocess
    import sys

    before = cal_file.read_bytes()
    with BoardEmulator() as emulator:
        proc = subprocess.run(
            [sys.executable, "-m", "robotd.cli", "calibrate", "trim", "--port", emulator.path,
             "--calibration", str(cal_file), "--dry-run", "--joint", "r_knee"],
            input="+++c" + "s" + "qq", capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).parents[1])
        assert emulator.moves_received >= 2  # it did jog
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run: not saved (r_knee)" in proc.stdout and "saved r_knee" not in proc.stdout, proc.stdout
    assert cal_file.read_bytes() == before
    assert list(cal_file.parent.iterdir()) == [cal_file]


def test_trim_offers_no_phone_options() -> None:
    from robotd.calibrate import build_parser

    trim = build_parser()._subparsers._group_actions[0].choices["trim"]  # type: ignore[union-attr]
    options = {o for action in trim._actions for o in action.option_strings}
    assert {"--port", "--dry-run", "--baud"} <= options
    assert not options & {"--udp", "--phone-format", "--allow"}
