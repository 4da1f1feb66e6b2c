"""The one set of rotation helpers (sim/rotations.py), against scipy, and shared by daemon and sim."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from calibration import load_calibration
from robotd.phone.fusion import Fusion, android_quat
from robotd.phone.formats import SensorReading
from sim.rotations import matrix_rows, matrix_to_quat, mount_inverse_quat, quat_mul, rotate, torso_from_phone

CAL = load_calibration()
RNG = np.random.default_rng(11)
RANDOM = Rotation.random(20, random_state=5)


def as_wxyz(r: Rotation) -> np.ndarray:
    return r.as_quat(scalar_first=True, canonical=True)


def same_rotation(q: np.ndarray, ref: np.ndarray) -> bool:
    return abs(float(np.dot(np.asarray(q), ref))) == pytest.approx(1.0, abs=1e-12)


def test_matrix_to_quat_matches_scipy_for_awkward_rotations() -> None:
    awkward = [CAL.phone_to_torso, np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]),
               np.diag([-1.0, -1.0, 1.0])]
    for m in awkward + list(RANDOM.as_matrix()):
        q = matrix_to_quat(m)
        assert isinstance(q, tuple) and all(type(v) is float for v in q) and q[0] >= 0.0
        assert same_rotation(q, as_wxyz(Rotation.from_matrix(m)))


def test_quat_mul_is_rotation_composition() -> None:
    for a, b in zip(RANDOM[:10], RANDOM[10:]):
        product = quat_mul(as_wxyz(a), as_wxyz(b).tolist())
        assert same_rotation(product, as_wxyz(a * b))


def test_mount_inverse_is_the_transpose() -> None:
    for m in [CAL.phone_to_torso] + list(RANDOM.as_matrix()):
        assert same_rotation(mount_inverse_quat(m), as_wxyz(Rotation.from_matrix(m.T)))


def test_torso_from_phone_inverts_the_mount() -> None:
    """R_torso = R_phone P^T, w_torso = P w_phone, for random phone orientations and mounts."""
    for phone, mount in zip(RANDOM[:10], RANDOM[10:]):
        p = mount.as_matrix()
        gyro = RNG.normal(size=3)
        quat, rate = torso_from_phone(as_wxyz(phone), gyro, p)
        assert same_rotation(quat, as_wxyz(phone * mount.inv()))
        np.testing.assert_allclose(rate, p @ gyro, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(rate, rotate(matrix_rows(p), gyro.tolist()))


def test_daemon_fusion_inverts_the_mount_like_the_simulator() -> None:
    """A phone orientation through the daemon's Fusion equals the sim's torso_from_phone, bit for bit."""
    fusion = Fusion(CAL)
    for i, phone in enumerate(RANDOM):
        w, x, y, z = as_wxyz(phone).tolist()
        gyro = RNG.normal(size=3)
        out = fusion.update([SensorReading("quaternion", (w, x, y, z), i * 0.01),
                             SensorReading("gyro", tuple((gyro + CAL.gyro_bias_rad_s).tolist()), i * 0.01)],
                            i * 0.01)
        normalised = android_quat("quaternion", (w, x, y, z))  # the daemon normalises what the phone sent
        quat, rate = torso_from_phone(normalised, gyro + CAL.gyro_bias_rad_s - CAL.gyro_bias_rad_s,
                                      CAL.phone_to_torso)
        np.testing.assert_array_equal(out.quat_wxyz, quat)
        np.testing.assert_array_equal(out.gyro_torso_rad_s, rate)
