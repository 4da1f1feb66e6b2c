"""Fusion: AHRS convergence, direct rotation vectors through the mount, dt, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import load_calibration
from robotd.phone.fusion import Fusion
from robotd.phone.formats import SensorReading
from sim.observation import gravity_in_torso
from sim.phone_stream import phone_sample

CAL = load_calibration()
RATE_HZ = 100.0


def torso_quat(pitch_deg: float = 0.0, roll_deg: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    """Torso->world quaternion (w,x,y,z) from yaw, then pitch about y, then roll about x."""
    rotation = Rotation.from_euler("ZYX", [yaw_deg, pitch_deg, roll_deg], degrees=True)
    return rotation.as_quat(scalar_first=True)


def imu_readings(quat_wxyz, gyro_torso=(0.0, 0.0, 0.0), t: float = 0.0, calibration=CAL) -> list[SensorReading]:
    s = phone_sample(t, quat_wxyz, gyro_torso, calibration.phone_to_torso, rotation_vector=False)
    return [SensorReading("accel", s.accel_m_s2, t), SensorReading("gyro", s.gyro_rad_s, t)]


def rotation_vector(quat_wxyz, t: float, kind: str = "rotation_vector") -> SensorReading:
    x, y, z, w = phone_sample(t, quat_wxyz, (0, 0, 0), CAL.phone_to_torso).rotation_vector_xyzw
    return SensorReading(kind, (x, y, z) if kind == "game_rotation_vector" else (x, y, z, w, 0.1), t)


@pytest.mark.parametrize("pitch_deg, roll_deg", [(0, 0), (30, 0), (-20, 15), (0, -40), (60, 25)])
def test_still_phone_converges_to_torso_gravity(pitch_deg, roll_deg):
    q = torso_quat(pitch_deg, roll_deg, yaw_deg=70)
    fusion = Fusion(CAL, sample_period_s=1 / RATE_HZ)
    for i in range(400):
        out = fusion.update(imu_readings(q, t=i / RATE_HZ), arrival_t=100.0 + i / RATE_HZ)
    assert out.source == "ahrs"
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), gravity_in_torso(q), atol=2e-3)


def test_rotation_vector_upright_maps_through_mount():
    fusion = Fusion(CAL)
    # Robot upright with the default mount: the phone stands upright, screen backwards.
    out = fusion.update([rotation_vector(torso_quat(), 1.0)], arrival_t=5.0)
    assert out.source == "rotation_vector"
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), (0.0, 0.0, -1.0), atol=1e-9)


@pytest.mark.parametrize("kind", ["rotation_vector", "game_rotation_vector"])
def test_rotation_vector_tilted_and_missing_w(kind):
    q = torso_quat(pitch_deg=25, roll_deg=-10, yaw_deg=-120)
    out = Fusion(CAL).update([rotation_vector(q, 1.0, kind)], arrival_t=5.0)
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), gravity_in_torso(q), atol=1e-9)
    np.testing.assert_allclose(abs(np.dot(out.quat_wxyz, q)), 1.0, atol=1e-9)  # yaw too


def test_sensorstream_quaternion_is_wxyz():
    q = torso_quat(pitch_deg=-35)
    x, y, z, w = phone_sample(0, q, (0, 0, 0), CAL.phone_to_torso).rotation_vector_xyzw
    out = Fusion(CAL).update([SensorReading("quaternion", (w, x, y, z), 0.0)], arrival_t=1.0)
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), gravity_in_torso(q), atol=1e-9)


def test_direct_orientation_preferred_then_times_out_to_ahrs():
    fusion = Fusion(CAL, orientation_timeout_s=0.5)
    upright, tilted = torso_quat(), torso_quat(pitch_deg=40)
    for i in range(300):
        fusion.update(imu_readings(upright, t=i / RATE_HZ), arrival_t=i / RATE_HZ)
    out = fusion.update([rotation_vector(tilted, 3.0)], arrival_t=3.0)
    assert out.source == "rotation_vector"
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), gravity_in_torso(tilted), atol=1e-9)
    out = fusion.update(imu_readings(upright, t=3.2), arrival_t=3.2)
    assert out.source == "rotation_vector"  # still fresh
    out = fusion.update(imu_readings(upright, t=3.6), arrival_t=3.6)
    assert out.source == "ahrs"
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), (0, 0, -1), atol=5e-3)


def test_gyro_goes_to_torso_frame_after_phone_frame_bias():
    bias = np.array([0.01, -0.02, 0.03])
    calibration = load_calibration()
    object.__setattr__(calibration, "gyro_bias_rad_s", bias)
    gyro_torso = np.array([0.5, -0.25, 1.0])
    gyro_phone = CAL.phone_to_torso.T @ gyro_torso + bias
    out = Fusion(calibration).update([SensorReading("gyro", tuple(gyro_phone), 1.0)], arrival_t=1.0)
    np.testing.assert_allclose(out.gyro_torso_rad_s, gyro_torso, atol=1e-12)
    assert out.quat_wxyz is None and out.source == "none"  # no accel yet: no orientation
    assert not out.gyro_torso_rad_s.flags.writeable


def yaw_rad(quat_wxyz) -> float:
    w, x, y, z = quat_wxyz
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def spin_yaw_rad(phone_times: bool, arrival_burst: bool) -> float:
    """Torso yaw the AHRS integrates over 1 s of spinning at 1 rad/s about the vertical.

    The AHRS holds heading during its 3 s start-up phase (no magnetometer), so the spin
    starts after 4 s standing still. Bursty arrival bunches packets every 250 ms.
    """
    fusion = Fusion(CAL, sample_period_s=0.01)
    yaw_before = None
    for i in range(501):
        t = i / RATE_HZ
        spin_t = max(0.0, t - 4.0)
        arrival = 10.0 + (t // 0.25) * 0.25 if arrival_burst else 10.0 + t
        gyro = (0.0, 0.0, 1.0 if t > 4.0 else 0.0)
        readings = imu_readings(torso_quat(yaw_deg=math.degrees(spin_t)), gyro_torso=gyro, t=t)
        if not phone_times:
            readings = [SensorReading(r.kind, r.values, None) for r in readings]
        out = fusion.update(readings, arrival_t=arrival)
        if i == 400:
            yaw_before = yaw_rad(out.quat_wxyz)
    return (yaw_rad(out.quat_wxyz) - yaw_before + math.pi) % (2 * math.pi) - math.pi


def test_dt_from_phone_timestamps_survives_bursty_arrival():
    assert spin_yaw_rad(phone_times=True, arrival_burst=False) == pytest.approx(1.0, abs=0.01)
    assert spin_yaw_rad(phone_times=True, arrival_burst=True) == pytest.approx(1.0, abs=0.01)
    assert spin_yaw_rad(phone_times=False, arrival_burst=False) == pytest.approx(1.0, abs=0.01)
    # Without phone timestamps, bursts distort dt (clamped, so the error stays bounded).
    assert spin_yaw_rad(phone_times=False, arrival_burst=True) != pytest.approx(1.0, abs=0.05)


def test_separate_accel_and_gyro_packets_fuse_as_pairs():
    q = torso_quat(pitch_deg=20, roll_deg=10)
    fusion = Fusion(CAL)
    for i in range(400):
        accel, gyro = imu_readings(q, t=i / RATE_HZ)
        fusion.update([accel], arrival_t=i / RATE_HZ)
        out = fusion.update([gyro], arrival_t=i / RATE_HZ + 0.001)
    np.testing.assert_allclose(gravity_in_torso(out.quat_wxyz), gravity_in_torso(q), atol=2e-3)


def test_deterministic_and_independent_of_grouping():
    rng = np.random.default_rng(7)
    stream = []
    for i in range(300):
        t = i / RATE_HZ
        q = torso_quat(pitch_deg=10 * math.sin(t), roll_deg=5 * math.cos(2 * t))
        readings = imu_readings(q, gyro_torso=rng.normal(0, 0.2, 3), t=t)
        readings.append(SensorReading("mag", tuple(rng.normal(0, 30, 3)), t))
        if i % 7 == 0:
            readings.append(rotation_vector(q, t, "game_rotation_vector"))
        stream.append((readings, 50.0 + t + rng.uniform(0, 0.004)))

    def run(grouped: bool) -> list[tuple]:
        fusion = Fusion(CAL)
        outs = []
        for readings, arrival in stream:
            batches = [readings] if grouped else [[r] for r in readings]
            for batch in batches:
                out = fusion.update(batch, arrival)
            outs.append((tuple(out.quat_wxyz), tuple(out.gyro_torso_rad_s), out.source))
        return outs

    assert run(True) == run(True) == run(False)
