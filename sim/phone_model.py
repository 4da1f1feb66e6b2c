"""The phone as the robot's only sensor: what it reports, and how the daemon turns that into torso state.

The simulated phone is the ``imu`` site of the model (its frame is the phone frame:
x right, y up the screen, z out of the screen). Each episode draws the phone's sample
rate and packet latency (MuJoCo's native sensor ``interval`` and ``delay``: the reading
is sampled and held at the phone rate and arrives ``latency`` later, so the policy sees
the newest sample that has arrived), a gyro bias, and a mounting error (the site is
turned a few degrees away from the calibrated mount). White gyro noise is added per read.

The policy's view of the phone goes through the daemon's mount inversion (phone reading ->
torso orientation and rate through the *calibrated* ``phone_to_torso``): the same
:mod:`sim.rotations` functions the daemon's :class:`robotd.phone.fusion.Fusion` calls, so a
mounting error hurts in simulation just as on the robot. This module needs numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.rotations import matrix_rows, mount_inverse_quat, quat_mul, rotate, rotvec_to_quat

_NOISE_BLOCK = 4096  # pre-drawn gyro noise samples, cycled: no RNG call per step


@dataclass(frozen=True)
class PhoneConfig:
    """Per-episode phone ranges. ``rate_hz=None`` samples at every physics step."""

    rate_hz: tuple[float, float] | None = (100.0, 200.0)
    latency_ms: tuple[float, float] = (10.0, 60.0)
    gyro_bias_std_rad_s: float = 0.02
    gyro_noise_std_rad_s: float = 0.03
    mount_error_deg: float = 3.0

    @classmethod
    def undelayed(cls) -> "PhoneConfig":
        """The phone's own readings at the physics rate, latency left to the transport."""
        return cls(rate_hz=None, latency_ms=(0.0, 0.0))

    @classmethod
    def ideal(cls) -> "PhoneConfig":
        """A perfect phone (no latency, noise, bias or mount error): for tests."""
        return cls(rate_hz=None, latency_ms=(0.0, 0.0), gyro_bias_std_rad_s=0.0,
                   gyro_noise_std_rad_s=0.0, mount_error_deg=0.0)


class PhoneModel:
    """The simulated phone on one model/data pair: per-episode draws and cheap per-step reads.

    It owns the phone sensors' ``delay``/``interval`` and the imu site's orientation in the
    model it is given (MuJoCo model and data arrays are plain numpy arrays, hence no MuJoCo
    import). Reads go through views of ``data.sensordata`` made once, not per step.
    """

    def __init__(self, model, data, site_id: int, sensor_ids: np.ndarray, phone_to_torso: np.ndarray,
                 config: PhoneConfig = PhoneConfig()):
        self.model = model
        self.config = config
        self.site_id = int(site_id)
        self.sensor_ids = np.asarray(sensor_ids)
        quat_adr, gyro_adr, accel_adr = (int(a) for a in model.sensor_adr[self.sensor_ids])
        sensordata = data.sensordata
        self._quat = sensordata[quat_adr:quat_adr + 4]
        self._gyro = sensordata[gyro_adr:gyro_adr + 3]
        self._accel = sensordata[accel_adr:accel_adr + 3]
        # Quaternion and gyro side by side in sensordata (they are, in sim/assets/biped.xml): one read.
        self._quat_gyro = sensordata[quat_adr:quat_adr + 7] if gyro_adr == quat_adr + 4 else None
        self.phone_to_torso = np.asarray(phone_to_torso, dtype=np.float64)
        self._mount_inverse = mount_inverse_quat(self.phone_to_torso)
        self._p2t = matrix_rows(self.phone_to_torso)
        self.bias_rad_s = np.zeros(3)
        self.latency_s = 0.0
        self.period_s = 0.0
        self._noise = np.zeros((_NOISE_BLOCK, 3))
        self._noise_rows = self._noise.tolist()  # the same samples as Python floats, for read_torso
        self._noise_i = 0
        self._gyro_buf = np.zeros(3)

    @property
    def bias_rad_s(self) -> np.ndarray:
        """Gyro bias (rad/s, phone frame), drawn per episode; assign to set a known one."""
        return self._bias_rad_s

    @bias_rad_s.setter
    def bias_rad_s(self, bias: np.ndarray) -> None:
        self._bias_rad_s = np.array(bias, dtype=np.float64).reshape(3)
        self._bias = tuple(self._bias_rad_s.tolist())  # the same, as floats for read_torso_floats

    def randomize(self, rng: np.random.Generator) -> None:
        """Draw this episode's rate, latency, bias, mount error and noise stream."""
        c = self.config
        self.period_s = 0.0 if c.rate_hz is None else 1.0 / rng.uniform(*c.rate_hz)
        self.latency_s = rng.uniform(*c.latency_ms) * 1e-3
        history = self.model.sensor_history[self.sensor_ids, 0]
        limit_s = float(history.min() - 2) * float(self.model.opt.timestep)
        if self.latency_s + self.period_s > limit_s:
            raise ValueError(f"phone latency + period {1e3 * (self.latency_s + self.period_s):.0f} ms "
                             f"exceeds the sensor history ({1e3 * limit_s:.0f} ms)")
        self.model.sensor_delay[self.sensor_ids] = self.latency_s
        self.model.sensor_interval[self.sensor_ids, 0] = self.period_s
        self.bias_rad_s = rng.normal(0.0, c.gyro_bias_std_rad_s, 3)
        tilt = rng.uniform(-1.0, 1.0, 3) * math.radians(c.mount_error_deg)
        # The compiler marks the imu site "same frame as its body" (it is compiled at identity),
        # and kinematics then copies the body's frame, ignoring site_quat: clear the flag.
        self.model.site_sameframe[self.site_id] = 0
        self.model.site_quat[self.site_id] = rotvec_to_quat(tilt)
        self._noise = rng.normal(0.0, c.gyro_noise_std_rad_s, (_NOISE_BLOCK, 3))
        self._noise_rows = self._noise.tolist()
        self._noise_i = 0

    def read_phone(self) -> tuple[np.ndarray, np.ndarray]:
        """The newest arrived sample: (orientation wxyz phone->world, gyro rad/s), phone frame.

        Both arrays are reused between calls (the quaternion is a live view); copy to keep.
        """
        np.add(self._gyro, self.bias_rad_s, out=self._gyro_buf)
        self._gyro_buf += self._noise[self._noise_i]
        self._noise_i = (self._noise_i + 1) % _NOISE_BLOCK
        return self._quat, self._gyro_buf

    def read_torso(self) -> tuple[np.ndarray, np.ndarray]:
        """The daemon's view: torso orientation (wxyz torso->world) and rate (rad/s, torso frame).

        ``sim.rotations.torso_from_phone(*read_phone(), phone_to_torso)`` for the same reading
        and noise sample (equal within rounding); see :meth:`read_torso_floats`.
        """
        quat, gyro = self.read_torso_floats()
        return np.array(quat), np.array(gyro)

    def read_torso_floats(self) -> tuple[tuple[float, float, float, float], tuple[float, float, float]]:
        """:meth:`read_torso` as Python floats, for ``ObservationSpec.build_from_floats``.

        Computed on floats because the env calls it every step: a handful of numpy calls on
        3- and 4-vectors cost more than the arithmetic.
        """
        i = self._noise_i
        self._noise_i = i + 1 if i + 1 < _NOISE_BLOCK else 0
        nx, ny, nz = self._noise_rows[i]
        bx, by, bz = self._bias
        if self._quat_gyro is not None:
            aw, ax, ay, az, gx, gy, gz = self._quat_gyro.tolist()
        else:
            (aw, ax, ay, az), (gx, gy, gz) = self._quat.tolist(), self._gyro.tolist()
        gyro = (gx + bx + nx, gy + by + ny, gz + bz + nz)  # (reading + bias) + noise, as read_phone
        return quat_mul((aw, ax, ay, az), self._mount_inverse), rotate(self._p2t, gyro)

    def accel(self) -> np.ndarray:
        """Accelerometer (specific force, m/s^2, phone frame): +9.81 along phone y when upright."""
        return self._accel
