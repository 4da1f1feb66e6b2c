"""Gymnasium environment: the biped hangs from a string and must learn to stand up by itself.

The policy sees exactly what the daemon will give it on the real robot
(:class:`sim.observation.ObservationSpec` built from the simulated phone through the
calibrated mount) and commands joint target offsets that end at the same targets as the
daemon's ``targets_rad`` + ``clamp_angles``: ``data.ctrl`` holds the action itself and the
position actuators map and clamp it (:meth:`sim.model.Biped.use_action_ctrl`, tested
equivalent). Everything else (string tension, true orientation, contact forces) is
privileged and only shapes the reward.

The step is kept thin on purpose (``bench/sim_speed.py``): one ``mj_step(nstep=10)`` call
per 50 Hz control step; delays, phone sample-and-hold and the action -> target map and clamp
done natively by MuJoCo; arrays bound once per episode; the phone reading and the reward on
Python floats. Per step it allocates only what it returns (the observation, the info dicts).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

# Offscreen EGL unless the caller chose a GL backend: MuJoCo reads this once, at import.
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from calibration import Calibration, load_calibration  # noqa: E402
from sim.model import Biped, DomainRandomization, init_ctrl_history  # noqa: E402
from sim.observation import ActionHistory, ObservationSpec  # noqa: E402
from sim.phone_model import PhoneConfig, PhoneModel  # noqa: E402


#: Phone gyros saturate at 2000 deg/s; the observation space bounds the scaled gyro with it.
_GYRO_RANGE_RAD_S = 35.0


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward terms; each weighted term is reported in ``info["reward_terms"]``."""

    upright: float = 1.0  # exp(-(1 - up_z) / 0.02)
    self_support: float = 1.0  # 1 - F_string / (m g)
    feet_loaded: float = 0.5  # both soles carry >= 25% of the weight -> 1
    height: float = 1.0  # exp(-((h - h_stand) / 0.05)^2), IMU site height
    action_rate: float = -0.05  # sum of squared action changes
    torque: float = -0.01  # sum of squared servo torques (N.m)^2
    alive: float = 0.5


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an episode. ``string_length_m=None`` starts "supported"."""

    obs_spec: ObservationSpec = field(default_factory=ObservationSpec)
    control_hz: float = 50.0
    episode_s: float = 10.0
    settle_s: float = 0.3
    settle_kp_scale: float = 0.25
    crouch_depth: tuple[float, float] = (0.0, 1.0)  # initial crouch, in units of the action scale
    pose_noise: float = 0.2  # initial per-joint action noise
    tilt_deg: float = 5.0  # initial torso tilt
    string_length_m: float | None = None
    actuator_delay_ms: float | None = None  # fixed delay (e.g. calibration's dead_time_ms)
    randomization: DomainRandomization = field(default_factory=DomainRandomization)
    phone: PhoneConfig = field(default_factory=PhoneConfig)
    rewards: RewardWeights = field(default_factory=RewardWeights)
    backlash_rad: float = 0.0
    min_up_z: float = 0.5
    min_height_fraction: float = 0.45


class BipedBalanceEnv(gym.Env):
    """Continuous-action balance env: action in [-1, 1]^n_actions of ``config.obs_spec``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, config: EnvConfig | None = None, calibration: Calibration | None = None,
                 render_mode: str | None = None, render_size: tuple[int, int] = (240, 320)):
        self.config = config = config or EnvConfig()
        self.calibration = calibration or load_calibration()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.render_mode = render_mode
        self.render_size = render_size
        self.spec_obs = config.obs_spec
        self.biped = Biped(self.calibration, backlash_rad=config.backlash_rad)
        self.model = self.biped.model
        self.data = mujoco.MjData(self.model)
        self.phone = PhoneModel(self.model, self.data, self.biped.imu_site_id, self.biped.phone_sensor_ids,
                                self.calibration.phone_to_torso, config.phone)
        if config.settle_s < config.phone.latency_ms[1] * 1e-3 + 0.01:
            raise ValueError("settle_s must outlast the phone latency, or the first reading is stale")
        self.n_substeps = round(1.0 / (config.control_hz * self.biped.timestep_s))
        self.max_steps = round(config.episode_s * config.control_hz)
        self.metadata = {**self.metadata, "render_fps": config.control_hz}
        self.set_string_length(config.string_length_m or self.biped.supported_string_length_m)

        n = self.spec_obs.n_actions
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n,), dtype=np.float32)
        high = np.ones(self.spec_obs.size, dtype=np.float32)
        high[3:6] = _GYRO_RANGE_RAD_S * self.spec_obs.gyro_scale
        low = -high
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

        self.history = ActionHistory(self.spec_obs)
        self._prev_action = np.zeros(n)
        self._action = np.zeros(n)
        self._da = np.zeros(n)
        self._ones = np.ones(n)
        self._steps = 0
        self._up_z = self._height = self._tension = 0.0
        self._soles = (0.0, 0.0)
        self._renderer: mujoco.Renderer | None = None
        # MuJoCo maps the action to the servo target and clamps it (ctrl = action, see
        # Biped.use_action_ctrl): the same targets as ObservationSpec.targets_rad + clamp_angles.
        self.biped.use_action_ctrl(self.spec_obs.joint_index, self.spec_obs.action_scale_rad)
        self._kp = self.biped.kp
        # Views into MjData made once: attribute access on MjData builds a new array each time.
        d, b = self.data, self.biped
        idx = self.spec_obs.joint_index
        contiguous = len(idx) > 0 and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
        self._ctrl_action = d.ctrl[idx[0]:idx[0] + len(idx)] if contiguous else None
        self._torso_xmat = d.xmat[b.torso_id]
        self._imu_xpos = d.site_xpos[b.imu_site_id]
        self._actuator_force = d.actuator_force
        adr = (b.tension_adr, *b.sole_force_adr)
        contiguous = adr == tuple(range(adr[0], adr[0] + 3))
        self._privileged = d.sensordata[adr[0]:adr[0] + 3] if contiguous else None
        # MuJoCo resets the data itself on NaN/huge qpos, qvel or qacc and counts a warning.
        ids = sorted(int(w) for w in (
            mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC))
        self._blowup_warnings = d.warning.number[ids[0]:ids[-1] + 1]  # a view (the three are adjacent)
        if self._blowup_warnings.size != len(ids):
            raise RuntimeError(f"mjtWarning BADQPOS/BADQVEL/BADQACC are not adjacent: {ids}")
        self._leg_idx = {j: self.spec_obs.controlled_joints.index(j)
                         for j in self.spec_obs.controlled_joints if j[2:] in ("hip_pitch", "knee", "ankle_pitch")}

    # ----------------------------------------------------------------------------- curriculum

    def set_string_length(self, length_m: float) -> None:
        """String length (m): ``biped.supported_string_length_m`` (carries it) .. ``free_string_length_m``."""
        self.biped.set_string_length(length_m)

    @property
    def string_length_m(self) -> float:
        return self.biped.string_length_m

    # ----------------------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng, cfg, m, d = self.np_random, self.config, self.model, self.data
        self.biped.randomize(rng, cfg.randomization)
        if cfg.actuator_delay_ms is not None:
            self.biped.set_actuator_delay(cfg.actuator_delay_ms * 1e-3)
        self.phone.randomize(rng)
        self._kp = self.biped.kp

        action = self._initial_action(rng)
        mujoco.mj_resetData(m, d)
        d.qpos[self.biped.qpos_adr] = self._targets(action)
        self._place_hanging(rng)
        self._write_ctrl(action)
        init_ctrl_history(m, d)
        # Weak servos while settling, so the robot really sags onto the string (or the floor).
        self.biped.set_kp(self._kp * cfg.settle_kp_scale)
        mujoco.mj_step(m, d, round(cfg.settle_s / self.biped.timestep_s))
        self.biped.set_kp(self._kp)

        self.history.reset()
        for _ in range(self.spec_obs.action_history):
            self.history.push(action)
        self._prev_action[:] = action
        self._steps = 0
        # Per-episode constants of the hot path (the weight changes with the randomised masses).
        w, b = cfg.rewards, self.biped
        self._episode_consts = (w.upright, w.self_support, w.feet_loaded, w.height, w.action_rate, w.torque,
                                w.alive, b.weight_n, b.stand_height_m, cfg.min_height_fraction * b.stand_height_m,
                                cfg.min_up_z)
        # Everything the step needs, bound once per episode (attribute chains cost in the hot loop).
        self._hot = (m, d, self.n_substeps, self._ctrl_action, self.phone.read_torso_floats,
                     self.spec_obs.build_from_floats,
                     self.history, self._torso_xmat, self._imu_xpos, self._privileged, self._actuator_force,
                     self._blowup_warnings, self._ones, -self._ones)
        self._measure()
        return self._observation(), self._info({})

    def step(self, action):
        (model, data, n_substeps, ctrl, read_torso, build, history, torso_xmat, imu_xpos, privileged,
         force, blowup_warnings, ones, minus_ones) = self._hot
        a, prev, da = self._action, self._prev_action, self._da
        a[:] = action
        np.maximum(a, minus_ones, out=a)  # array bounds: a Python scalar bound costs a conversion per call
        np.minimum(a, ones, out=a)
        np.subtract(a, prev, out=da)
        action_rate = float(da.dot(da))
        if action_rate != action_rate:  # as targets_rad does: a NaN action component means "nominal"
            a[np.isnan(a)] = 0.0
            np.subtract(a, prev, out=da)
            action_rate = float(da.dot(da))
        self._action, self._prev_action = prev, a  # a is the previous action from now on
        if ctrl is not None:
            ctrl[:] = a  # MuJoCo maps it to the servo target and clamps it (Biped.use_action_ctrl)
        else:
            data.ctrl[self.spec_obs.joint_index] = a
        mujoco.mj_step(model, data, n_substeps)
        steps = self._steps = self._steps + 1
        history.push(a)
        quat, gyro = read_torso()  # Python floats: ObservationSpec.build's values, without arrays
        obs = build(quat, gyro, history)

        # Privileged state for the reward, termination and info.
        up_z = torso_xmat.item(8)
        height = imu_xpos.item(2)
        if privileged is not None:
            tension, right, left = privileged.tolist()
            tension = abs(tension)
        else:
            tension, (right, left) = self.biped.string_tension_n(data), self.biped.sole_forces_n(data)
        (w_upright, w_support, w_feet, w_height, w_rate, w_torque, w_alive,
         weight_n, stand_height_m, min_height_m, min_up_z) = self._episode_consts
        r_upright = w_upright * math.exp(-(1.0 - up_z) / 0.02)
        r_support = w_support * (1.0 - tension / weight_n)
        r_feet = w_feet * min(1.0, min(right, left) / (0.25 * weight_n))
        r_height = w_height * math.exp(-(((height - stand_height_m) / 0.05) ** 2))
        r_rate = w_rate * action_rate
        r_torque = w_torque * float(force.dot(force))
        terms = {"upright": r_upright, "self_support": r_support, "feet_loaded": r_feet, "height": r_height,
                 "action_rate": r_rate, "torque": r_torque, "alive": w_alive}
        reward = r_upright + r_support + r_feet + r_height + r_rate + r_torque + w_alive  # sum(terms.values())
        # Fallen over, sunk below ~45% of standing height, or the physics blew up (MuJoCo then
        # resets the data itself and counts a warning).
        terminated = up_z < min_up_z or height < min_height_m or any(blowup_warnings.tolist())
        info = {"reward_terms": terms, "string_tension_n": tension, "torso_up_z": up_z, "torso_height_m": height}
        return obs, reward, terminated, steps >= self.max_steps, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self.render_size)
        self._renderer.update_scene(self.data, camera="side")
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ----------------------------------------------------------------------------- internals

    def _targets(self, action: np.ndarray) -> np.ndarray:
        return self.calibration.clamp_angles(self.spec_obs.targets_rad(action, self.calibration.nominal_rad))

    def _initial_action(self, rng: np.random.Generator) -> np.ndarray:
        """A random bent pose, as an action: crouch (hips and ankles forward, knees bent) + noise."""
        cfg = self.config
        action = rng.uniform(-cfg.pose_noise, cfg.pose_noise, self.spec_obs.n_actions)
        depth = rng.uniform(*cfg.crouch_depth)
        for name, i in self._leg_idx.items():
            action[i] += depth if name.endswith("knee") else -0.5 * depth
        return np.clip(action, -1.0, 1.0)

    def _place_hanging(self, rng: np.random.Generator) -> None:
        """Tilt the torso a little and hang it under the hook: string taut, or feet on the floor."""
        d, b = self.data, self.biped
        tilt = rng.uniform(-1.0, 1.0, 2) * math.radians(self.config.tilt_deg)
        yaw = rng.uniform(-math.pi, math.pi)
        quat = np.empty(4)
        mujoco.mju_euler2Quat(quat, np.array([tilt[0], tilt[1], yaw]), "xyz")
        d.qpos[3:7] = quat
        d.qpos[0:3] = 0.0
        mujoco.mj_kinematics(self.model, d)
        anchor = d.site_xpos[b.anchor_site_id].copy()
        hook = self.model.site_pos[b.hook_site_id]
        # Anchor straight below the hook at the string length, unless that puts a foot in the floor.
        d.qpos[0:2] = hook[:2] - anchor[:2]
        d.qpos[2] = hook[2] - b.string_length_m - anchor[2]
        d.qpos[2] -= min(0.0, b.lowest_foot_z(d.qpos) - 1e-3)

    def _write_ctrl(self, action: np.ndarray) -> None:
        """Command an action (already in [-1, 1]): ctrl is in action units, MuJoCo clamps and maps it."""
        if self._ctrl_action is not None:
            self._ctrl_action[:] = action
        else:
            self.data.ctrl[self.spec_obs.joint_index] = action

    def _observation(self) -> np.ndarray:
        quat, gyro = self.phone.read_torso_floats()
        return self.spec_obs.build_from_floats(quat, gyro, self.history)

    def _measure(self) -> None:
        """Read the privileged state the reward, termination and info use, once per step."""
        self._up_z = self._torso_xmat.item(8)
        self._height = self._imu_xpos.item(2)
        if self._privileged is not None:
            tension, right, left = self._privileged.tolist()
            self._tension = abs(tension)
            self._soles = (right, left)
        else:
            d, b = self.data, self.biped
            self._tension = b.string_tension_n(d)
            self._soles = b.sole_forces_n(d)

    def _info(self, terms: dict[str, float]) -> dict[str, Any]:
        return {"reward_terms": terms, "string_tension_n": self._tension, "torso_up_z": self._up_z,
                "torso_height_m": self._height}


class BipedBalanceDiscreteEnv(BipedBalanceEnv):
    """The same task with one of ``n_bins`` levels per joint (for Q-learning)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.action_space = gym.spaces.MultiDiscrete([self.spec_obs.n_bins] * self.spec_obs.n_actions)
        self._levels = self.spec_obs.bin_levels()

    def step(self, action):
        # ObservationSpec.discrete_to_action, with the levels computed once.
        return super().step(self._levels[np.asarray(action, dtype=np.int64)])
