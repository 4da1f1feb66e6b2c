"""Phone readings -> torso orientation (torso->world quaternion) and torso gyro.

Two sources of phone orientation, in order of preference:

1. an orientation the phone computed itself (``game_rotation_vector``, then
   ``rotation_vector``, then Sensorstream's ``quaternion``), used directly while one has
   arrived within ``orientation_timeout_s``. The game rotation vector comes first because
   it ignores the magnetometer, which the servos' magnets disturb; yaw does not matter to
   the balance policy, tilt does.
2. otherwise the x-io Fusion AHRS (``imufusion``, ENU, like Android's world frame) fed
   accelerometer + gyroscope (+ magnetometer when one is fresh), stepped once per fresh
   accel/gyro pair.

The calibrated mount turns the phone orientation into the torso's:
``R_torso->world = R_phone->world @ phone_to_torso.T``; gyro vectors go through
``phone_to_torso`` after the phone-frame bias is subtracted. That arithmetic is
:mod:`sim.rotations`' (the simulated phone's :class:`~sim.phone_model.PhoneModel` uses the
same functions), so a policy trained in the simulator sees the mount inverted the same way.

Determinism: the state changes reading by reading, depending only on each reading and its
arrival time, so ``robotd replay --rerun`` reproduces a run exactly from the logged
``(arrival_t, phone_t, kind, values)`` rows however they are grouped into calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import imufusion
import numpy as np

from calibration import Calibration
from robotd.phone.formats import SensorReading
from sim.rotations import Quat, matrix_rows, mount_inverse_quat, quat_mul, rotate

#: Standard gravity: imufusion takes the accelerometer in g, Android sends m/s^2.
STANDARD_GRAVITY_M_S2 = 9.80665
_DEG_PER_RAD = 180.0 / math.pi
#: Orientation sources the phone computes itself, most preferred first.
DIRECT_ORIENTATION_KINDS: tuple[str, ...] = ("game_rotation_vector", "rotation_vector", "quaternion")


def gravity_aligned_quat(accel: tuple[float, float, float]) -> Quat:
    """Phone->world (ENU) orientation that puts the measured specific force on world up, heading 0.

    The shortest rotation taking the accelerometer direction onto +z; an upside-down phone
    (reading straight down) turns half a circle about x.
    """
    norm = math.sqrt(accel[0] ** 2 + accel[1] ** 2 + accel[2] ** 2)
    if norm < 1e-6:
        return (1.0, 0.0, 0.0, 0.0)
    ax, ay, az = accel[0] / norm, accel[1] / norm, accel[2] / norm
    # axis = a x z = (ay, -ax, 0); cos(angle) = az; half-angle form avoids acos.
    w = 1.0 + az
    if w < 1e-9:
        return (0.0, 1.0, 0.0, 0.0)
    x, y = ay, -ax
    scale = 1.0 / math.sqrt(w * w + x * x + y * y)
    return (w * scale, x * scale, y * scale, 0.0)


def android_quat(kind: str, values: tuple[float, ...]) -> Quat | None:
    """Phone->world unit quaternion (w,x,y,z) of an orientation reading, None if degenerate.

    Android rotation vectors are x,y,z[,w[,accuracy]] with w >= 0 implied when missing;
    Sensorstream's quaternion is already w,x,y,z.
    """
    if kind == "quaternion":
        w, x, y, z = values
    else:
        x, y, z = values[0], values[1], values[2]
        w = values[3] if len(values) > 3 else math.sqrt(max(0.0, 1.0 - x * x - y * y - z * z))
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if not norm > 1e-6:
        return None
    return (w / norm, x / norm, y / norm, z / norm)


@dataclass(frozen=True, slots=True)
class FusionOutput:
    """The newest torso state; arrays are read-only and never mutated afterwards."""

    quat_wxyz: np.ndarray | None  # torso->world, [w, x, y, z]
    gyro_torso_rad_s: np.ndarray | None
    source: str  # "ahrs", one of DIRECT_ORIENTATION_KINDS, or "none"
    # Arrival time of the newest reading behind each signal: a signal that stopped updating
    # must read as stale even while other sensors keep the stream (and the snapshot) fresh.
    quat_arrival_t: float | None = None
    gyro_arrival_t: float | None = None


def _frozen(values: tuple[float, ...]) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    array.flags.writeable = False
    return array


class Fusion:
    """Stateful phone->torso fusion; feed readings in arrival order with :meth:`update`."""

    def __init__(
        self,
        calibration: Calibration,
        sample_period_s: float = 0.01,
        *,
        gain: float = 0.5,
        min_dt_s: float = 1e-4,
        max_dt_s: float = 0.1,
        orientation_timeout_s: float = 0.5,
        mag_timeout_s: float = 0.5,
    ):
        if not 0 < min_dt_s <= sample_period_s <= max_dt_s:
            raise ValueError("need 0 < min_dt_s <= sample_period_s <= max_dt_s")
        self.sample_period_s = sample_period_s
        self.min_dt_s = min_dt_s
        self.max_dt_s = max_dt_s
        self.orientation_timeout_s = orientation_timeout_s
        self.mag_timeout_s = mag_timeout_s
        self._phone_to_torso = np.array(calibration.phone_to_torso, dtype=np.float64)
        self._mount = matrix_rows(self._phone_to_torso)
        self._torso_to_phone_quat = mount_inverse_quat(self._phone_to_torso)
        self._gyro_bias_rad_s = tuple(float(v) for v in calibration.gyro_bias_rad_s)
        self._gain = gain
        self._ahrs = imufusion.Ahrs()
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        """Forget all state (a new phone stream); the AHRS starts from its start-up phase."""
        self._ahrs.set_settings(
            imufusion.AhrsSettings(
                sample_rate=1.0 / self.sample_period_s,
                convention=imufusion.CONVENTION_ENU,
                gain=self._gain,
                gyroscope_range=2000.0,  # deg/s: typical phone gyro full scale
                acceleration_rejection=10.0,  # deg
                magnetic_rejection=10.0,  # deg
                rejection_timeout=5.0 / self.sample_period_s,  # samples (5 s)
            )
        )
        self._ahrs.restart()
        self._accel_g: tuple[float, float, float] | None = None
        self._accel_phone_t: float | None = None
        self._gyro_phone_rad_s: tuple[float, float, float] | None = None
        self._gyro_phone_t: float | None = None
        self._mag_ut: tuple[float, float, float] | None = None
        self._mag_arrival_t = -math.inf
        self._pair_fresh = [False, False]  # accel, gyro since the last AHRS step
        self._last_step_phone_t: float | None = None
        self._last_step_arrival_t: float | None = None
        self._ahrs_quat: Quat | None = None
        self._direct: dict[str, tuple[Quat, float]] = {}
        self._gyro_torso: tuple[float, float, float] | None = None
        self._gyro_arrival_t: float | None = None

    def update(self, readings: Iterable[SensorReading], arrival_t: float) -> FusionOutput:
        """Feed the readings of one packet (arrival time in local monotonic s); newest output."""
        for reading in readings:
            self._feed(reading, arrival_t)
        return self._refresh_output(arrival_t)

    def _feed(self, reading: SensorReading, arrival_t: float) -> None:
        kind, values = reading.kind, reading.values
        if kind == "accel":
            self._accel_g = (
                values[0] / STANDARD_GRAVITY_M_S2,
                values[1] / STANDARD_GRAVITY_M_S2,
                values[2] / STANDARD_GRAVITY_M_S2,
            )
            self._accel_phone_t = reading.phone_time_s
            self._pair_fresh[0] = True
        elif kind == "gyro":
            bx, by, bz = self._gyro_bias_rad_s
            g = (values[0] - bx, values[1] - by, values[2] - bz)
            self._gyro_phone_rad_s = g
            self._gyro_phone_t = reading.phone_time_s
            self._gyro_arrival_t = arrival_t
            self._gyro_torso = rotate(self._mount, g)
            self._pair_fresh[1] = True
        elif kind == "mag":
            self._mag_ut = (values[0], values[1], values[2])
            self._mag_arrival_t = arrival_t
        elif kind in DIRECT_ORIENTATION_KINDS:
            quat = android_quat(kind, values)
            if quat is not None:
                self._direct[kind] = (quat, arrival_t)
        else:
            return
        if self._pair_fresh[0] and self._pair_fresh[1]:
            self._step_ahrs(arrival_t)

    def _dt_s(self, phone_t: float | None, arrival_t: float) -> float:
        """Step length: phone clock when both ends have it and it is sane, else arrival clock."""
        dt: float | None = None
        if phone_t is not None and self._last_step_phone_t is not None:
            dt = phone_t - self._last_step_phone_t
            if not 0.0 < dt <= self.max_dt_s:
                dt = None
        if dt is None:
            last = self._last_step_arrival_t
            dt = self.sample_period_s if last is None else arrival_t - last
        return min(max(dt, self.min_dt_s), self.max_dt_s)

    def _step_ahrs(self, arrival_t: float) -> None:
        times = [t for t in (self._accel_phone_t, self._gyro_phone_t) if t is not None]
        phone_t = max(times) if times else None
        self._ahrs.set_sample_period(self._dt_s(phone_t, arrival_t))
        self._last_step_phone_t = phone_t
        self._last_step_arrival_t = arrival_t
        self._pair_fresh = [False, False]
        if self._ahrs_quat is None:
            # First sample of a stream: start level with the measured gravity instead of from
            # identity. imufusion's own start-up phase would otherwise report a wrong tilt for
            # its first seconds, which the safety layer would read as a fall.
            self._ahrs.set_quaternion(np.array(gravity_aligned_quat(self._accel_g)))  # type: ignore[arg-type]
            self._ahrs.skip_startup()
        gx, gy, gz = self._gyro_phone_rad_s  # type: ignore[misc]
        gyro_dps = (gx * _DEG_PER_RAD, gy * _DEG_PER_RAD, gz * _DEG_PER_RAD)
        if self._mag_ut is not None and arrival_t - self._mag_arrival_t <= self.mag_timeout_s:
            self._ahrs.update(gyro_dps, self._accel_g, self._mag_ut)
        else:
            self._ahrs.update_no_magnetometer(gyro_dps, self._accel_g)
        w, x, y, z = (float(v) for v in self._ahrs.get_quaternion())
        if math.isfinite(w + x + y + z):
            self._ahrs_quat = (w, x, y, z)
        else:  # cannot happen with range-checked readings; never let NaN reach the policy
            self.restarts += 1
            self._ahrs.restart()
            self._ahrs_quat = None

    def _refresh_output(self, arrival_t: float) -> FusionOutput:
        source, phone_quat, quat_t = "ahrs", self._ahrs_quat, self._last_step_arrival_t
        for kind in DIRECT_ORIENTATION_KINDS:
            entry = self._direct.get(kind)
            if entry is not None and arrival_t - entry[1] <= self.orientation_timeout_s:
                source, phone_quat, quat_t = kind, entry[0], entry[1]
                break
        if phone_quat is None:
            source = "none"
        quat = None if phone_quat is None else _frozen(quat_mul(phone_quat, self._torso_to_phone_quat))
        gyro = None if self._gyro_torso is None else _frozen(self._gyro_torso)
        return FusionOutput(quat, gyro, source, None if quat is None else quat_t,
                            None if gyro is None else self._gyro_arrival_t)
