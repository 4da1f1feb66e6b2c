"""Quaternion and mount helpers shared by the daemon's fusion and the simulated phone.

One copy of the rotation arithmetic both sides depend on, so the mount inversion the
simulator trains through is the daemon's, bit for bit:

* quaternions are ``(w, x, y, z)`` tuples of Python floats, Hamilton convention;
* the calibrated mount ``P = phone_to_torso`` maps phone-frame vectors to the torso frame
  (``v_torso = P v_phone``), so with ``R_phone`` the phone->world rotation the torso's is
  ``R_torso = R_phone P^T`` and its rate is ``w_torso = P w_phone``.

The per-reading functions (:func:`quat_mul`, :func:`rotate`) work on floats, not numpy
arrays: on 3- and 4-vectors a handful of numpy calls cost more than the arithmetic, and
both the daemon (per phone packet) and the simulator (per env step) call them on hot
paths. Importing this module must stay cheap (numpy only): the daemon's hot path uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Quat = tuple[float, float, float, float]
Vec3 = tuple[float, float, float]
Matrix3 = tuple[Vec3, Vec3, Vec3]


def quat_mul(a: Sequence[float], b: Sequence[float]) -> Quat:
    """Hamilton product ``a * b`` of wxyz quaternions: the rotation ``b`` followed by ``a``."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )


def rotate(m: Matrix3, v: Sequence[float]) -> Vec3:
    """``m @ v`` for a 3x3 matrix given as rows of floats (see :func:`matrix_rows`)."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = m
    x, y, z = v
    return (m00 * x + m01 * y + m02 * z, m10 * x + m11 * y + m12 * z, m20 * x + m21 * y + m22 * z)


def matrix_rows(m: np.ndarray) -> Matrix3:
    """A 3x3 matrix as a tuple of row tuples of Python floats, for :func:`rotate`."""
    rows = np.asarray(m, dtype=np.float64).reshape(3, 3).tolist()
    return tuple(tuple(row) for row in rows)  # type: ignore[return-value]


def matrix_to_quat(m: np.ndarray) -> Quat:
    """Unit quaternion (w >= 0) of a rotation matrix (Shepperd's method: no small divisor)."""
    r = np.asarray(m, dtype=np.float64).tolist()
    trace = r[0][0] + r[1][1] + r[2][2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (r[2][1] - r[1][2]) / s, (r[0][2] - r[2][0]) / s, (r[1][0] - r[0][1]) / s]
    else:  # the largest diagonal element's axis carries the quaternion
        i = max(range(3), key=lambda d: r[d][d])
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + r[i][i] - r[j][j] - r[k][k])
        q = [0.0] * 4
        q[0] = (r[k][j] - r[j][k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j][i] + r[i][j]) / s
        q[1 + k] = (r[k][i] + r[i][k]) / s
    if q[0] < 0:
        q = [-v for v in q]
    return (q[0], q[1], q[2], q[3])


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    """wxyz quaternion (array) of a rotation vector (axis times angle, rad)."""
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2)], np.asarray(v) / angle * math.sin(angle / 2)])


def mount_inverse_quat(phone_to_torso: np.ndarray) -> Quat:
    """Quaternion of ``P^T`` for ``P = phone_to_torso``: the torso's orientation in the phone frame.

    The conjugate of ``P``'s quaternion, so ``P`` is decomposed once.
    """
    w, x, y, z = matrix_to_quat(phone_to_torso)
    return (w, -x, -y, -z)


def torso_from_phone(
    phone_quat_wxyz: Sequence[float],
    phone_gyro_rad_s: Sequence[float],
    phone_to_torso: np.ndarray,
    mount_inverse: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Torso orientation (torso->world, wxyz) and rate (torso frame) from a phone reading.

    ``R_torso = R_phone P^T`` and ``w_torso = P w_phone``. Pass ``mount_inverse_quat(P)`` as
    ``mount_inverse`` to skip recomputing it. The per-reading paths (the daemon's
    :class:`robotd.phone.fusion.Fusion`, :meth:`sim.phone_model.PhoneModel.read_torso_floats`) call
    :func:`quat_mul` and :func:`rotate` with the mount precomputed; this is the same
    arithmetic for one reading as arrays.
    """
    if mount_inverse is None:
        mount_inverse = mount_inverse_quat(phone_to_torso)
    quat = quat_mul(_floats(phone_quat_wxyz), _floats(mount_inverse))
    return np.array(quat), np.array(rotate(matrix_rows(phone_to_torso), _floats(phone_gyro_rad_s)))


def _floats(v: Sequence[float]) -> Sequence[float]:
    return v.tolist() if isinstance(v, np.ndarray) else v
