"""IMU zero: the phone's mounting tilt and gyro bias, from readings taken with the robot upright.

With the robot held upright (standing in the nominal pose) and still, the accelerometer
measures gravity's reaction: +g along world up. Averaged over N seconds, its direction in
the phone frame ``u_p`` should map to torso up: ``phone_to_torso @ u_p == (0, 0, 1)``, i.e. the
torso's gravity reads (0, 0, -1). Only tilt is observable from gravity, so the existing
matrix ``P`` is corrected by the *smallest* rotation ``C`` that takes ``P @ u_p`` onto +z
(its axis is horizontal in the torso frame): ``P' = C @ P``. A heading (yaw) mounting error
stays as it was, and so does the nominal heading convention of the mount. The gyro bias is
the mean raw gyro (phone frame) over the same window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The robot counts as still when the gyro's per-axis standard deviation stays below this.
STILL_GYRO_STD_RAD_S = 0.15


@dataclass(frozen=True)
class ImuZero:
    phone_to_torso: np.ndarray  # corrected mount
    gyro_bias_rad_s: np.ndarray  # phone frame
    correction_deg: float  # angle of the tilt correction C
    correction_axis_torso: np.ndarray  # unit axis of C (horizontal), torso frame
    up_phone: np.ndarray  # measured up direction, phone frame
    gravity_torso_before: np.ndarray  # (0,0,-1) ideally; with the old mount
    accel_norm_m_s2: float
    gyro_std_rad_s: np.ndarray
    samples: int

    @property
    def still(self) -> bool:
        return bool(np.all(self.gyro_std_rad_s < STILL_GYRO_STD_RAD_S))

    def lines(self) -> list[str]:
        g = self.gravity_torso_before
        return [
            f"{self.samples} samples, |accel| {self.accel_norm_m_s2:.3f} m/s^2, gyro std "
            f"{np.array2string(self.gyro_std_rad_s, precision=3)} rad/s"
            + ("" if self.still else "  WARNING: the robot was moving"),
            f"torso gravity with the old mount: ({g[0]:+.4f}, {g[1]:+.4f}, {g[2]:+.4f})",
            f"tilt correction {self.correction_deg:.2f} deg about torso axis "
            f"{np.array2string(self.correction_axis_torso, precision=3)}",
            "phone_to_torso = " + np.array2string(self.phone_to_torso, precision=5, suppress_small=True)
            .replace("\n", ""),
            f"gyro_bias_rad_s = {np.array2string(self.gyro_bias_rad_s, precision=5)}",
        ]


def smallest_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation matrix of least angle taking unit vector ``a`` onto unit vector ``b``."""
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-12:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def compute_imu_zero(phone_to_torso: np.ndarray, accel_m_s2: np.ndarray, gyro_rad_s: np.ndarray) -> ImuZero:
    """The corrected mount and gyro bias from raw phone-frame accel (N,3) and gyro (M,3) at rest."""
    accel = np.asarray(accel_m_s2, dtype=np.float64).reshape(-1, 3)
    gyro = np.asarray(gyro_rad_s, dtype=np.float64).reshape(-1, 3)
    if len(accel) < 10 or len(gyro) < 10:
        raise ValueError(f"too few readings to zero the IMU ({len(accel)} accel, {len(gyro)} gyro)")
    mean = accel.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not norm > 1.0:
        raise ValueError(f"mean accelerometer reading {mean} is not gravity")
    up_phone = mean / norm
    p = np.asarray(phone_to_torso, dtype=np.float64)
    up_torso = p @ up_phone
    c = smallest_rotation(up_torso, np.array([0.0, 0.0, 1.0]))
    corrected = c @ p
    u, _, vt = np.linalg.svd(corrected)  # keep it exactly orthonormal
    corrected = u @ vt
    axis = np.cross(up_torso, [0.0, 0.0, 1.0])
    sin = float(np.linalg.norm(axis))
    angle = math.degrees(math.atan2(sin, float(up_torso[2])))
    return ImuZero(
        phone_to_torso=corrected,
        gyro_bias_rad_s=gyro.mean(axis=0),
        correction_deg=angle,
        correction_axis_torso=axis / sin if sin > 1e-12 else np.array([1.0, 0.0, 0.0]),
        up_phone=up_phone,
        gravity_torso_before=-up_torso,
        accel_norm_m_s2=norm,
        gyro_std_rad_s=gyro.std(axis=0),
        samples=len(accel),
    )
