"""The calibration loader: the shipped file is valid, every broken file names file, key, reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from calibration import DEFAULT_CALIBRATION_PATH, JOINT_NAMES, CalibrationError, load_calibration

SHIPPED = DEFAULT_CALIBRATION_PATH.read_text()


def test_shipped_calibration_is_valid() -> None:
    cal = load_calibration()
    assert cal.joint_names == JOINT_NAMES
    assert sorted(cal.channels.tolist()) == list(range(1, 18))
    assert np.all(cal.min_rad <= cal.nominal_rad) and np.all(cal.nominal_rad <= cal.max_rad)
    assert np.all(cal.min_rad <= cal.safe_rad) and np.all(cal.safe_rad <= cal.max_rad)
    assert np.allclose(cal.phone_to_torso @ cal.phone_to_torso.T, np.eye(3))


def test_angle_pulse_round_trip_and_direction() -> None:
    cal = load_calibration()
    angles = cal.nominal_rad
    assert np.allclose(cal.pulses_to_angles(cal.angles_to_pulses(angles)), angles)
    r, l = cal.joint("r_knee"), cal.joint("l_knee")
    assert r.angle_to_pulse(0.5) > r.neutral_us and l.angle_to_pulse(0.5) < l.neutral_us  # mirrored servos


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=17, max_size=17))
def test_pulses_always_within_calibrated_limits(angles: list[float]) -> None:
    cal = load_calibration()
    pulses = cal.angles_to_pulses(np.array(angles))
    assert np.all(np.isfinite(pulses))
    assert np.all(pulses >= cal.min_us) and np.all(pulses <= cal.max_us)


def _broken(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    assert old in SHIPPED, old
    path = tmp_path / "robot.toml"
    path.write_text(SHIPPED.replace(old, new, count))
    return path


CASES = [
    # (replace this, with this, expected key, reason pattern)
    ('channel = 2\n', 'channel = 1\n', "joints[1].channel", "duplicate channel 1"),
    ('min_us = 1200\nmax_us = 1800', 'min_us = 1900\nmax_us = 1800', "joints[7].min_us", "min_us 1900 > max_us 1800"),
    ('max_us = 2400', 'max_us = 2600', "joints[1].max_us", r"outside 500\.\.2500"),
    ('name = "neck_yaw"', 'name = "tail_wag"', "joints[0].name", "unknown joint 'tail_wag'"),
    ('channel = 3\n', 'channel = "three"\n', "joints[2].channel", "expected an integer, got str"),
    ('us_per_rad = 637.0\nmin_us = 1000', 'us_per_rad = -637.0\nmin_us = 1000', "joints[0].us_per_rad", "must be > 0"),
    ('direction = 1\nus_per_rad = 637.0\nmin_us = 1000', 'direction = 2\nus_per_rad = 637.0\nmin_us = 1000',
     "joints[0].direction", "must be 1 or -1"),
    ('channel = 17\n', 'channel = 40\n', "joints[16].channel", r"must be in 1\.\.32"),
    ('l_knee = 0.5', 'l_knee = 3.0', "poses.nominal.l_knee", "outside the joint's calibrated range"),
    ('l_knee = 0.5', 'l_kneee = 0.5', "poses.nominal.l_kneee", "unknown joint"),
    ('phone_to_torso = [[0.0, 0.0, -1.0]', 'phone_to_torso = [[0.0, 0.0, 1.0]', "imu.phone_to_torso",
     "not a rotation matrix"),
    ('fall_ticks = 3', 'fall_ticks = 0', "safety.fall_ticks", "must be >= 1"),
    ('stale_timeout_ms = 150.0', 'stale_timeout_ms = nan', "safety.stale_timeout_ms", "must be finite"),
    ('[robot]', '[robots]', "robots", "unknown section 'robots'; did you mean 'robot'"),
    ('[poses.safe]', '[poses.saf]', "poses.saf", "did you mean 'safe'"),
    ('l_knee = 0.5', 'l_kne = 0.5', "poses.nominal.l_kne", "unknown joint 'l_kne'; did you mean 'l_knee'"),
]


# A misspelt key at any level is an error naming the nearest valid key, never ignored (a typo
# in [safety] used to leave the default 4.0 rad/s slew limit in force silently).
# (a line of the shipped file, its key misspelt, the table it is in)
TYPOS = [("max_slew_rad_s = 4.0", "max_slew_rads", "safety"), ("mass_kg = 1.9", "mas_kg", "robot"),
         ("channels = 32", "chanels", "board"), ("gyro_bias_rad_s = [0.0, 0.0, 0.0]", "gyro_bias_rads", "imu"),
         ("dead_time_ms = 100.0", "dead_time", "servo_timing"), ("neutral_us = 1500", "neutral", "joints[0]")]
CASES += [(line, typo + line[line.index(" ="):], f"{table}.{typo}",
           f"unknown key '{typo}'; did you mean '{line.split(' =')[0]}'") for line, typo, table in TYPOS]


@pytest.mark.parametrize("old,new,key,reason", CASES, ids=[c[2] for c in CASES])
def test_broken_file_names_file_key_reason(tmp_path: Path, old: str, new: str, key: str, reason: str) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(CalibrationError) as info:
        load_calibration(path)
    err = info.value
    assert err.path == str(path)
    assert err.key == key
    assert re.search(reason, err.reason), err.reason
    assert str(path) in str(err) and key in str(err)


def test_missing_joint(tmp_path: Path) -> None:
    start = SHIPPED.index('[[joints]]\nname = "l_ankle_roll"')
    path = tmp_path / "robot.toml"
    path.write_text(SHIPPED[:start])
    with pytest.raises(CalibrationError, match="missing joints: l_ankle_roll"):
        load_calibration(path)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no such file"):
        load_calibration(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[robot\nname=")
    with pytest.raises(CalibrationError, match="not valid TOML") as info:
        load_calibration(bad)
    assert info.value.key == "<toml>"
