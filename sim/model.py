"""The MuJoCo model of the biped, built from the MJCF plus the calibration, and its runtime knobs.

``sim/assets/biped.xml`` holds the geometry, masses and MG996R actuator defaults. What
the calibration TOML owns (joint axes and ranges, the nominal pose, the phone mount) is
written into the spec here before compiling, so the TOML stays the one source of truth
and the simulator can never drift from what the daemon commands.

:class:`Biped` wraps the compiled model with the indices and per-episode knobs
(string length, actuator delay, domain randomisation) that the env and
:class:`SimRobot` need; :class:`SimRobot` is the simulated robot behind the daemon's
``--port sim``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# Offscreen EGL unless the caller chose a GL backend: MuJoCo reads this once, at import.
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from calibration import JOINT_NAMES, Calibration  # noqa: E402
from sim.phone_model import PhoneConfig, PhoneModel  # noqa: E402

ASSET_PATH = Path(__file__).with_name("assets") / "biped.xml"
GRAVITY_M_S2 = 9.81
_BOX_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)

#: Longest actuator delay the history buffers hold; per-episode delays must stay below it.
MAX_ACTUATOR_DELAY_S = 0.4
#: Longest phone packet latency plus sample period the phone sensors' history holds.
MAX_PHONE_DELAY_S = 0.12

#: Extra string length beyond "taut when standing" at which the string cannot catch the robot
#: before it lies on the floor (hook 1 m up, anchor ~0.37 m from the feet).
FREE_STRING_SLACK_M = 0.5

PHONE_SENSORS = ("phone_quat", "phone_gyro", "phone_accel")


@dataclass(frozen=True)
class DomainRandomization:
    """Per-episode randomisation ranges; each servo, body and the floor draw independently.

    Scales multiply the model's nominal value; ``(1, 1)`` (see :meth:`none`) disables one.
    """

    kp_scale: tuple[float, float] = (0.8, 1.2)
    forcerange_n_m: tuple[float, float] = (0.8, 1.3)
    damping_scale: tuple[float, float] = (0.7, 1.3)
    armature_scale: tuple[float, float] = (0.5, 1.5)
    frictionloss_n_m: tuple[float, float] = (0.02, 0.1)
    mass_scale: tuple[float, float] = (0.9, 1.1)
    torso_com_offset_m: float = 0.02
    floor_friction: tuple[float, float] = (0.5, 1.5)
    actuator_delay_ms: tuple[float, float] = (80.0, 250.0)

    @classmethod
    def none(cls, actuator_delay_ms: float = 0.0) -> "DomainRandomization":
        """The nominal model with a fixed delay: for tests and for replaying a measured robot."""
        return cls(
            kp_scale=(1.0, 1.0), forcerange_n_m=(1.1, 1.1), damping_scale=(1.0, 1.0),
            armature_scale=(1.0, 1.0), frictionloss_n_m=(0.05, 0.05), mass_scale=(1.0, 1.0),
            torso_com_offset_m=0.0, floor_friction=(1.0, 1.0),
            actuator_delay_ms=(actuator_delay_ms, actuator_delay_ms),
        )


def build_model(calibration: Calibration, *, backlash_rad: float = 0.0, fixed_base: bool = False) -> mujoco.MjModel:
    """Compile the MJCF with the calibration's joint axes, ranges and phone mount.

    ``backlash_rad`` > 0 adds a passive hinge of that +- range in series with every servo
    (gear play); ``fixed_base`` bolts the torso in place (bench tests of the servos).
    """
    spec = mujoco.MjSpec.from_file(str(ASSET_PATH))
    for joint in calibration.joints:
        js = spec.joint(joint.name)
        js.axis = list(joint.axis)
        js.range = [joint.min_rad, joint.max_rad]
        act = spec.actuator(joint.name)
        act.ctrlrange = [joint.min_rad, joint.max_rad]
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.nsample = int(math.ceil(MAX_ACTUATOR_DELAY_S / spec.option.timestep)) + 2
        if backlash_rad > 0:
            play = js.parent.add_joint()
            play.name = f"{joint.name}_backlash"
            play.type = mujoco.mjtJoint.mjJNT_HINGE
            play.axis = list(joint.axis)
            play.pos = js.pos
            play.range = [-backlash_rad, backlash_rad]
            play.limited = mujoco.mjtLimited.mjLIMITED_TRUE
            play.damping = [0.01, 0.0, 0.0]
            play.armature = 1e-4
    # The phone body's frame is the phone frame: its axes are phone_to_torso's columns.
    p2t = calibration.phone_to_torso
    spec.body("phone").alt.xyaxes = np.concatenate([p2t[:, 0], p2t[:, 1]])
    for name in PHONE_SENSORS:
        spec.sensor(name).nsample = int(math.ceil(MAX_PHONE_DELAY_S / spec.option.timestep)) + 2
    if fixed_base:
        spec.delete(spec.joint("root"))
    return spec.compile()


class Biped:
    """A compiled model plus the indices and runtime knobs the env and SimRobot share.

    Arrays indexed by servo are in :data:`calibration.JOINT_NAMES` order (the actuator order).
    """

    def __init__(self, calibration: Calibration, *, backlash_rad: float = 0.0, fixed_base: bool = False):
        self.calibration = calibration
        self.model = build_model(calibration, backlash_rad=backlash_rad, fixed_base=fixed_base)
        m = self.model
        self.timestep_s = float(m.opt.timestep)
        self.joint_ids = np.array([m.joint(n).id for n in JOINT_NAMES])
        self.qpos_adr = m.jnt_qposadr[self.joint_ids].copy()
        self.dof_adr = m.jnt_dofadr[self.joint_ids].copy()
        self.actuator_ids = np.array([m.actuator(n).id for n in JOINT_NAMES])
        assert np.array_equal(self.actuator_ids, np.arange(len(JOINT_NAMES))), "actuators must follow JOINT_NAMES"
        self.torso_id = m.body("torso").id
        self.imu_site_id = m.site("imu").id
        self.hook_site_id = m.site("hook").id
        self.anchor_site_id = m.site("string_anchor").id
        self.floor_geom_id = m.geom("floor").id
        self.foot_geom_ids = np.array([m.geom("r_foot").id, m.geom("l_foot").id])
        self.string_id = m.tendon("string").id
        self.phone_sensor_ids = np.array([m.sensor(n).id for n in PHONE_SENSORS])
        self.tension_adr = int(m.sensor_adr[m.sensor("string_tension").id])
        self.sole_force_adr = (int(m.sensor_adr[m.sensor("r_sole_force").id]), int(m.sensor_adr[m.sensor("l_sole_force").id]))
        self.has_freejoint = bool(m.njnt and m.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE)
        self.mass_kg = float(m.body_subtreemass[self.torso_id])
        self.weight_n = self.mass_kg * GRAVITY_M_S2
        # Position actuators: force = kp*ctrl - kp*q - kv*qd, so ctrl is the target angle (rad).
        self._kp = m.actuator_gainprm[:, 0].copy()
        self._nominal = _NominalParams.capture(m, self)
        self.stand_qpos = self._stand_qpos(calibration.nominal_rad)
        m.key_qpos[m.key("stand").id] = self.stand_qpos
        m.key_ctrl[m.key("stand").id] = calibration.nominal_rad
        d = mujoco.MjData(m)
        d.qpos[:] = self.stand_qpos
        mujoco.mj_kinematics(m, d)
        #: IMU site height above the floor when standing in the nominal pose (m).
        self.stand_height_m = float(d.site_xpos[self.imu_site_id, 2])
        #: String length that is just taut when the robot stands in the nominal pose.
        self.supported_string_length_m = float(
            np.linalg.norm(d.site_xpos[self.hook_site_id] - d.site_xpos[self.anchor_site_id])
        )
        self.free_string_length_m = self.supported_string_length_m + FREE_STRING_SLACK_M
        self.set_string_length(self.supported_string_length_m)

    # ----------------------------------------------------------------------------- pose

    def _stand_qpos(self, angles_rad: np.ndarray) -> np.ndarray:
        """qpos of a pose (17 joint angles), torso upright, lowest sole point on the floor."""
        qpos = self.model.qpos0.copy()
        qpos[self.qpos_adr] = angles_rad
        if self.has_freejoint:
            qpos[2] += -self.lowest_foot_z(qpos)
        return qpos

    def standing_height_m(self, angles_rad: np.ndarray) -> float:
        """IMU site height above the floor standing upright in a pose (the reward's height target
        for a policy holding that pose)."""
        d = mujoco.MjData(self.model)
        d.qpos[:] = self._stand_qpos(angles_rad)
        mujoco.mj_kinematics(self.model, d)
        return float(d.site_xpos[self.imu_site_id, 2])

    def lowest_foot_z(self, qpos: np.ndarray) -> float:
        """Height of the lowest foot-box corner for a configuration (for placing the robot)."""
        d = mujoco.MjData(self.model)
        d.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, d)
        return float(self.foot_corners(d)[:, 2].min())

    def foot_corners(self, data: mujoco.MjData) -> np.ndarray:
        """The 8 corners of each foot box in world coordinates (16 x 3, m), from ``data``'s kinematics."""
        return np.concatenate([
            data.geom_xpos[gid] + (_BOX_CORNERS * self.model.geom_size[gid]) @ data.geom_xmat[gid].reshape(3, 3).T
            for gid in self.foot_geom_ids])

    # ----------------------------------------------------------------------------- knobs

    def set_string_length(self, length_m: float) -> None:
        """Pull-only string: the tendon may be anything from 0 up to ``length_m``."""
        if not length_m > 0:
            raise ValueError(f"string length must be > 0 m, got {length_m}")
        self.model.tendon_range[self.string_id] = (0.0, float(length_m))

    @property
    def string_length_m(self) -> float:
        return float(self.model.tendon_range[self.string_id, 1])

    def string_tension_n(self, data: mujoco.MjData) -> float:
        """String tension (N): the tendon's limit constraint force, >= 0."""
        return abs(float(data.sensordata[self.tension_adr]))

    def sole_forces_n(self, data: mujoco.MjData) -> tuple[float, float]:
        """Normal force on the right and left sole (N), from the sole touch sensors."""
        return float(data.sensordata[self.sole_force_adr[0]]), float(data.sensordata[self.sole_force_adr[1]])

    def set_actuator_delay(self, delay_s: float) -> None:
        """Command-to-motion dead time of every servo (s); takes effect on the next step."""
        limit = (self.model.actuator_history[0, 0] - 2) * self.timestep_s
        if not 0.0 <= delay_s <= limit:
            raise ValueError(f"actuator delay {delay_s * 1e3:.0f} ms outside 0..{limit * 1e3:.0f} ms")
        self.model.actuator_delay[:] = delay_s

    def set_kp(self, kp: np.ndarray) -> None:
        """Position gain of every servo (N.m/rad): the actuator pulls with kp*(target - q) - kv*qd."""
        kp = np.broadcast_to(np.asarray(kp, dtype=np.float64), self._kp.shape)
        self._kp[:] = kp
        self.model.actuator_gainprm[:, 0] = kp
        self.model.actuator_biasprm[:, 1] = -kp

    @property
    def kp(self) -> np.ndarray:
        return self._kp.copy()

    def randomize(self, rng: np.random.Generator, ranges: DomainRandomization) -> None:
        """Draw this episode's physical parameters from the nominal ones (never compounding)."""
        m, nom, n = self.model, self._nominal, len(JOINT_NAMES)
        self.set_kp(nom.kp * rng.uniform(*ranges.kp_scale, n))
        force = rng.uniform(*ranges.forcerange_n_m, n)
        m.actuator_forcerange[:] = np.stack([-force, force], axis=1)
        m.dof_damping[self.dof_adr] = nom.damping * rng.uniform(*ranges.damping_scale, n)
        m.dof_armature[self.dof_adr] = nom.armature * rng.uniform(*ranges.armature_scale, n)
        m.dof_frictionloss[self.dof_adr] = rng.uniform(*ranges.frictionloss_n_m, n)
        scale = rng.uniform(*ranges.mass_scale, m.nbody)
        scale[0] = 1.0
        m.body_mass[:] = nom.body_mass * scale
        m.body_inertia[:] = nom.body_inertia * scale[:, None]
        m.body_ipos[:] = nom.body_ipos
        m.body_ipos[self.torso_id] += rng.uniform(-1, 1, 3) * ranges.torso_com_offset_m
        m.geom_friction[self.floor_geom_id, 0] = rng.uniform(*ranges.floor_friction)
        self.set_actuator_delay(rng.uniform(*ranges.actuator_delay_ms) * 1e-3)
        # Masses moved: recompute the derived constants (subtree masses, constraint weights).
        mujoco.mj_setConst(m, mujoco.MjData(m))
        self.mass_kg = float(m.body_subtreemass[self.torso_id])
        self.weight_n = self.mass_kg * GRAVITY_M_S2


@dataclass(frozen=True)
class _NominalParams:
    """The compiled model's nominal values, so each episode randomises from them afresh."""

    kp: np.ndarray
    damping: np.ndarray
    armature: np.ndarray
    body_mass: np.ndarray
    body_inertia: np.ndarray
    body_ipos: np.ndarray

    @classmethod
    def capture(cls, m: mujoco.MjModel, biped: Biped) -> "_NominalParams":
        return cls(
            kp=biped._kp.copy(),
            damping=m.dof_damping[biped.dof_adr].copy(),
            armature=m.dof_armature[biped.dof_adr].copy(),
            body_mass=m.body_mass.copy(),
            body_inertia=m.body_inertia.copy(),
            body_ipos=m.body_ipos.copy(),
        )


def init_ctrl_history(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Fill every actuator's delay buffer with its current ctrl, so a reset does not replay zeros."""
    for i in range(model.nu):
        nsample = int(model.actuator_history[i, 0])
        if nsample:
            mujoco.mj_initCtrlHistory(model, data, i, None, np.full((nsample, 1), data.ctrl[i]))


class SimRobot:
    """The simulated robot behind the daemon's ``--port sim``: joint targets in, phone out.

    It hangs from the string in the nominal pose at construction. The servos get the
    calibration's measured dead time (``servo_timing.dead_time_ms``); the phone readings are
    the phone's own (phone frame, gyro bias/noise and mounting error included) without
    packet latency, which the transport in front of the daemon adds.
    """

    def __init__(self, calibration: Calibration, seed: int = 0, *, string_length_m: float | None = None):
        self.biped = Biped(calibration)
        self.model = self.biped.model
        self.data = mujoco.MjData(self.model)
        rng = np.random.default_rng(seed)
        self.biped.set_actuator_delay(calibration.servo_timing.dead_time_ms * 1e-3)
        self.biped.set_string_length(string_length_m or self.biped.supported_string_length_m)
        self.phone = PhoneModel(self.model, self.data, self.biped.imu_site_id, self.biped.phone_sensor_ids,
                                calibration.phone_to_torso, PhoneConfig.undelayed())
        self.phone.randomize(rng)
        mujoco.mj_resetDataKeyframe(self.model, self.data, self.model.key("stand").id)
        init_ctrl_history(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)
        self._carry_s = 0.0

    @property
    def time_s(self) -> float:
        return float(self.data.time)

    def set_targets(self, angles_rad: np.ndarray) -> None:
        """Command all 17 servos (rad, JOINT_NAMES order), clamped to the calibrated limits."""
        self.data.ctrl[:] = self.biped.calibration.clamp_angles(np.asarray(angles_rad, dtype=np.float64))

    def step(self, dt_s: float) -> None:
        """Advance the physics by ``dt_s`` of simulated time (whole 2 ms steps; the rest carries over)."""
        self._carry_s += dt_s
        n = int(self._carry_s / self.biped.timestep_s + 1e-9)
        if n > 0:
            mujoco.mj_step(self.model, self.data, n)
            self._carry_s -= n * self.biped.timestep_s

    def phone_reading(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(orientation quaternion wxyz phone->world, gyro rad/s, accelerometer m/s^2), phone frame."""
        quat, gyro = self.phone.read_phone()
        return quat.copy(), gyro.copy(), self.phone.accel().copy()

    def torso_up_z(self) -> float:
        """World-z component of the torso's up axis: 1 upright, 0 lying."""
        return float(self.data.xmat[self.biped.torso_id, 8])

    def string_tension(self) -> float:
        """String tension (N)."""
        return self.biped.string_tension_n(self.data)
