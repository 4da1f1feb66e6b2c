"""Gymnasium environment: the biped hangs from a string and must learn to stand up by itself.

The policy sees exactly what the daemon will give it on the real robot
(:class:`sim.observation.ObservationSpec` built from the simulated phone through the
calibrated mount) and its action reaches the servos by the daemon's own path: the same
``ObservationSpec.targets_rad``, then the slew limit, clamp, pulse rounding and deadband of
:mod:`sim.servo_command` that :class:`robotd.daemon.safety.Safety` applies, so each servo pulls
towards the pulse the board last received. An episode ends on the daemon's fall rule
(:class:`sim.servo_command.FallRule`, on the orientation the policy sees). Everything else
(string tension, true orientation, contact forces) is privileged and only shapes the reward
and the tasks' scores (:mod:`sim.balance_task`: the balance task's, and the stay-up task's
where the config has a ``stay_up`` rule).

The step is kept thin on purpose (``bench/sim_speed.py``): one ``mj_step(nstep=10)`` call
per 50 Hz control step; delays and phone sample-and-hold done natively by MuJoCo; arrays
bound once per episode; the phone reading and the reward on Python floats.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import gymnasium as gym

# Offscreen EGL unless the caller chose a GL backend: MuJoCo reads this once, at import.
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from calibration import Calibration, load_calibration  # noqa: E402
from sim.balance_task import (STAY_UP_PUSHES, BalanceScore, PushModel, StayUpRule, StayUpScore,  # noqa: E402
                               StringLetOut, SuccessRule)
from sim.model import MAX_ACTUATOR_DELAY_S, Biped, DomainRandomization, init_ctrl_history  # noqa: E402
from sim.observation import ActionHistory, ObservationSpec  # noqa: E402
from sim.phone_model import PhoneConfig, PhoneModel  # noqa: E402
from sim.servo_command import (FallRule, holds_frame, limit_targets, max_step_rad, pulses_to_send,  # noqa: E402
                               up_z_of_quat)


#: Phone gyros saturate at 2000 deg/s; the observation space bounds the scaled gyro with it.
_GYRO_RANGE_RAD_S = 35.0
#: The scale of EnvConfig's initial crouch and pose noise (rad per unit): the default contract's
#: action scale, so hold's and pd's episodes are as they were before policies had their own.
INITIAL_POSE_SCALE_RAD = ObservationSpec.action_scale_rad


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward terms; each weighted term is reported in ``info["reward_terms"]``.

    The standing terms (upright, height, feet) are paid in proportion to how much of its own
    weight the robot carries, ``support = max(0, 1 - tension / (support_load * m g))``: a robot
    resting on the string earns only ``alive`` however upright it hangs, so hanging is never
    worth more than standing, and a fall (which ends the episode) forfeits everything after it.
    """

    upright: float = 1.0  # support * exp(-(1 - up_z) / 0.02)
    feet_loaded: float = 0.5  # support * (both soles carry >= 25% of the weight -> 1)
    height: float = 1.0  # support * exp(-((h - h_stand) / 0.05)^2), IMU site height; h_stand in action zero's pose
    action_rate: float = -0.05  # sum of squared action changes
    torque: float = -0.01  # sum of squared servo torques (N.m)^2
    alive: float = 0.5
    support_load: float = 0.5  # string load (fraction of the weight) at which support reaches 0


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an episode. ``string_length_m=None`` starts "supported"."""

    obs_spec: ObservationSpec = field(default_factory=ObservationSpec)
    control_hz: float = 50.0
    episode_s: float = 10.0
    settle_s: float = 0.3
    settle_kp_scale: float = 0.25
    # The initial pose, in units of INITIAL_POSE_SCALE_RAD around the nominal pose (the same
    # pose for every policy on a seed, whatever its own action scale and stance).
    crouch_depth: tuple[float, float] = (0.0, 1.0)  # initial crouch
    pose_noise: float = 0.2  # initial per-joint noise
    tilt_deg: float = 5.0  # initial torso tilt
    string_length_m: float | None = None
    actuator_delay_ms: float | None = None  # fixed delay (e.g. calibration's dead_time_ms)
    randomization: DomainRandomization = field(default_factory=DomainRandomization)
    phone: PhoneConfig = field(default_factory=PhoneConfig)
    rewards: RewardWeights = field(default_factory=RewardWeights)
    backlash_rad: float = 0.0
    min_height_fraction: float = 0.45
    string_let_out: StringLetOut | None = None  # lengthen the string during the episode
    pushes: PushModel | None = None  # pushes on the torso (episode time from the first control step)
    success: SuccessRule = field(default_factory=SuccessRule)
    stay_up: StayUpRule | None = None  # also score the stay-up task's figures (StayUpScore) in info["task"]


def balance_task_config(**overrides: Any) -> EnvConfig:
    """The balance task (:mod:`sim.balance_task`): taut string let out 5 cm, pushes at 4/6/8 s."""
    fields = {"string_let_out": StringLetOut(), "pushes": PushModel(), **overrides}
    return EnvConfig(**fields)


def undelayed_push_config(push_n: float = 7.5, **overrides: Any) -> EnvConfig:
    """The learner's positive control: the balance task with no servo dead time and no phone
    latency (slew limit, noise, string unchanged) and every push ``push_n``. There, feedback
    can win: BO-tuned PD gains reach 0.46 at 7.5 N against hold's 0.21 (docs/learning.md), so a
    learner that cannot beat hold here has a defect of its own, whatever the robot allows."""
    base = balance_task_config(**overrides)
    return replace(base, randomization=replace(base.randomization, actuator_delay_ms=(0.0, 0.0)),
                   phone=replace(base.phone, latency_ms=(0.0, 0.0)),
                   pushes=replace(base.pushes, force_n=(push_n, push_n)))


def stay_up_task_config(**overrides: Any) -> EnvConfig:
    """The stay-up task (:mod:`sim.balance_task`): lowered as in the balance task, then pushed
    every 2-4 s with up to 12 N for 26 s of a 30 s episode, scored on standing, knock-downs and
    get-ups (:class:`StayUpScore`) as well as by the balance task's rule."""
    fields = {"episode_s": 30.0, "pushes": STAY_UP_PUSHES, "stay_up": StayUpRule(), **overrides}
    return balance_task_config(**fields)


def centred_actuator_delay(config: EnvConfig, dead_time_ms: float) -> EnvConfig:
    """``config`` with its randomised actuator delay centred on a robot's measured dead time.

    Why: a policy trained for one robot should see that robot's dead time most, with the same
    spread of delays around it as the task's own range (its width is kept). The range is moved
    up or down as a whole to stay within 0 ms and what the simulator's delay buffers hold. A
    task that models no dead time at all (the undelayed control's (0, 0)) keeps none.
    """
    low, high = config.randomization.actuator_delay_ms
    if high <= 0.0:
        return config
    width = high - low
    start = min(max(dead_time_ms - width / 2.0, 0.0), MAX_ACTUATOR_DELAY_S * 1e3 - width)
    return replace(config, randomization=replace(config.randomization, actuator_delay_ms=(start, start + width)))


#: Task name -> its EnvConfig factory (``robotd eval --sim --task``; each has gymnasium ids in sim.envs).
TASK_CONFIGS: dict[str, Callable[..., EnvConfig]] = {"balance": balance_task_config,
                                                    "undelayed-push": undelayed_push_config,
                                                    "stay-up": stay_up_task_config}


def make_balance_task(discrete: bool = False, task: str = "balance", **kwargs: Any) -> "BipedBalanceEnv":
    """gymnasium entry point of the task ids (``config`` defaults to ``task``'s)."""
    kwargs.setdefault("config", TASK_CONFIGS[task]())
    return (BipedBalanceDiscreteEnv if discrete else BipedBalanceEnv)(**kwargs)


class BipedBalanceEnv(gym.Env):
    """The biped on its string, 50 Hz control of ``config.obs_spec``'s joints: the env's contract.

    ``n`` is ``obs_spec.n_actions`` (10 leg joints by default), ``K`` its ``action_history``
    (4); the model is ``sim/assets/biped.xml`` (:mod:`sim.model`). docs/sim.md says why each
    rule is as it is.

    ## Action space

    ``Box(-1, 1, (n,), float32)`` (:class:`BipedBalanceDiscreteEnv`: ``MultiDiscrete([n_bins] * n)``
    mapped to evenly spaced levels in [-1, 1]). The action reaches the servos by the daemon's path:

    | step | what happens | where |
    |---|---|---|
    | non-finite | any NaN/inf component: the whole frame held, nothing sent, history gets zeros | ``servo_command.holds_frame`` |
    | clip | each component to [-1, 1] | ``step`` |
    | targets | ``nominal + stance + action_scale_rad * a`` on the controlled joints | ``ObservationSpec.targets_rad`` |
    | slew, clamp | at most ``max_slew_rad_s / control_hz`` per tick, then the calibrated limits | ``servo_command.limit_targets`` |
    | pulses | whole microseconds; a channel sent only beyond ``deadband_us`` | ``servo_command.pulses_to_send`` |

    ## Observation space

    ``Box(float32, (6 + n K,))``, :meth:`ObservationSpec.build` from the simulated phone
    (latency, noise, sample-and-hold) through the calibrated mount:

    | index | observation | unit, bound |
    |---|---|---|
    | 0..2 | gravity in the torso frame (unit vector) | 1, [-1, 1] |
    | 3..5 | torso gyro * ``gyro_scale`` | rad/s * scale, +-35 rad/s * scale |
    | 6.. | the last K actions, newest first (held frames as zeros) | 1, [-1, 1] |

    ## Rewards

    The sum of these weighted terms (:class:`RewardWeights`), each also in
    ``info["reward_terms"]`` under its name. ``support = max(0, 1 - tension / (support_load m g))``:
    the standing terms are paid only as far as the robot carries its own weight.

    | term | value | weight |
    |---|---|---|
    | upright | support * exp(-(1 - up_z) / 0.02), true torso up-z | 1.0 |
    | feet_loaded | support * min(1, min(F_right, F_left) / (0.25 m g)), sole forces (N) | 0.5 |
    | height | support * exp(-((h - h_stand) / 0.05)^2), IMU site height (m); h_stand in action zero's pose | 1.0 |
    | action_rate | sum (a - a_prev)^2, the actions as the history records them | -0.05 |
    | torque | sum of squared servo torques (N m)^2 | -0.01 |
    | alive | 1 | 0.5 |

    ## Episode end

    | | condition |
    |---|---|
    | terminated | the daemon's fall rule on the observed orientation (:class:`FallRule`: tilt > ``fall_tilt_deg`` for ``fall_ticks`` ticks) |
    | terminated | the IMU site below ``min_height_fraction`` (0.45) of h_stand |
    | terminated | MuJoCo reset the physics itself (a bad qpos, qvel or qacc warning) |
    | truncated | ``episode_s * control_hz`` steps (10 s: 500) |

    ## Info

    ``reward_terms`` (above; empty after reset), ``string_tension_n``, ``torso_up_z``,
    ``torso_height_m``; on an episode's last step ``task``: the balance task's score
    (:class:`BalanceScore`) and, with a ``stay_up`` rule, the stay-up task's (:class:`StayUpScore`).

    ## Starting state

    A random crouch plus per-joint noise (``crouch_depth``, ``pose_noise``, in units of
    ``INITIAL_POSE_SCALE_RAD``), ``tilt_deg`` of torso tilt and a random yaw, hung under the hook,
    ``settle_s`` of settling at weak servos; the history filled with that pose as an action, as the
    daemon fills it on taking control.
    """

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
        self._renderer: mujoco.Renderer | None = None
        # The daemon's action path (sim.servo_command): slew limit per control tick, clamp,
        # whole-microsecond pulses, deadband. ctrl holds each servo's angle of its last pulse.
        self._max_step_rad = max_step_rad(self.calibration, 1.0 / config.control_hz)
        # The height reward's target: the IMU's height standing in the pose action zero holds
        # (the nominal pose, or the policy's stance), so a wider, lower stance is not paid less.
        self._stand_height_m = self.biped.standing_height_m(self.calibration.clamp_angles(
            self.spec_obs.targets_rad(np.zeros(self.spec_obs.n_actions), self.calibration.nominal_rad)))
        self._fall_rule = FallRule(self.calibration)
        self._commanded_rad = self.calibration.nominal_rad.copy()
        self._sent_us = np.rint(self.calibration.angles_to_pulses(self._commanded_rad))
        self._pushes: list = []
        self._score = BalanceScore(self.max_steps, config.control_hz, config.success)
        self._stay_up: StayUpScore | None = None
        self._kp = self.biped.kp
        # Views into MjData made once: attribute access on MjData builds a new array each time.
        d, b = self.data, self.biped
        self._torso_force = d.xfrc_applied[b.torso_id, :2]
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
        """String length (m) at the start of every episode from the next reset on (curriculum).

        ``biped.supported_string_length_m`` carries the robot, ``free_string_length_m`` never
        catches it; the task's ``string_let_out`` lengthens it from there during the episode.
        """
        self._base_string_length_m = float(length_m)
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

        pose = self._initial_pose_rad(rng)
        mujoco.mj_resetData(m, d)
        self.biped.set_string_length(self._base_string_length_m)
        self._commanded_rad = pose
        d.qpos[self.biped.qpos_adr] = self._commanded_rad
        self._place_hanging(rng)
        self._sent_us = np.rint(self.calibration.angles_to_pulses(self._commanded_rad))
        d.ctrl[:] = self.calibration.pulses_to_angles(self._sent_us)
        init_ctrl_history(m, d)
        # Weak servos while settling, so the robot really sags onto the string (or the floor).
        self.biped.set_kp(self._kp * cfg.settle_kp_scale)
        mujoco.mj_step(m, d, round(cfg.settle_s / self.biped.timestep_s))
        self.biped.set_kp(self._kp)

        # The daemon's contract on taking control: the history holds the commanded pose as an action.
        start_action = self.spec_obs.pose_action(pose, self.calibration.nominal_rad)
        self.history.fill(start_action)
        self._prev_action[:] = start_action
        self._steps = 0
        self._fall_rule.reset()
        self._score = BalanceScore(self.max_steps, cfg.control_hz, cfg.success)
        if cfg.stay_up is not None:
            self._stay_up = StayUpScore(cfg.control_hz, self.max_steps, cfg.stay_up)
        # Drawn after everything else, so the pushes do not change the episode's other draws.
        dt = 1.0 / cfg.control_hz
        self._pushes = [(round(p.start_s / dt), max(1, round(p.duration_s / dt)), p)
                        for p in (cfg.pushes.schedule(rng, cfg.episode_s) if cfg.pushes else [])]
        self._torso_force[:] = 0.0
        # Per-episode constants of the hot path (the weight changes with the randomised masses).
        w, b = cfg.rewards, self.biped
        self._episode_consts = (w.upright, w.feet_loaded, w.height, w.action_rate, w.torque,
                                w.alive, 1.0 / (w.support_load * b.weight_n), b.weight_n, self._stand_height_m,
                                cfg.min_height_fraction * self._stand_height_m)
        # Everything the step needs, bound once per episode (attribute chains cost in the hot loop).
        self._hot = (m, d, self.n_substeps, self.phone.read_torso_floats, self.spec_obs.build_from_floats,
                     self.history, self._actuator_force, self._blowup_warnings, self._ones, -self._ones)
        up_z, height, tension, _, _ = self._measure()
        return self._observation(), self._info({}, tension, up_z, height)

    def step(self, action):
        (model, data, n_substeps, read_torso, build, history, force, blowup_warnings, ones, minus_ones) = self._hot
        a, prev, da = self._action, self._prev_action, self._da
        a[:] = action
        held = holds_frame(a)
        if held:  # the daemon's rule: the whole frame held; its history records zeros, as PolicyTick's does
            a[:] = 0.0
        else:
            np.maximum(a, minus_ones, out=a)  # array bounds: a Python scalar bound costs a conversion per call
            np.minimum(a, ones, out=a)
        np.subtract(a, prev, out=da)
        action_rate = float(da.dot(da))
        self._action, self._prev_action = prev, a  # a is the previous action from now on
        if not held:
            self._command(a)
        steps = self._steps
        if self._pushes or self.config.string_let_out is not None:
            self._disturb(steps)
        mujoco.mj_step(model, data, n_substeps)
        steps = self._steps = steps + 1
        history.push(a)
        quat, gyro = read_torso()  # Python floats: ObservationSpec.build's values, without arrays
        obs = build(quat, gyro, history)
        fell = self._fall_rule.update(up_z_of_quat(quat))  # the daemon's rule, on what it sees

        up_z, height, tension, right, left = self._measure()  # privileged: reward, termination, info
        (w_upright, w_feet, w_height, w_rate, w_torque, w_alive, inv_support_load_n,
         weight_n, stand_height_m, min_height_m) = self._episode_consts
        support = max(0.0, 1.0 - tension * inv_support_load_n)
        r_upright = support * w_upright * math.exp(-(1.0 - up_z) / 0.02)
        r_feet = support * w_feet * min(1.0, min(right, left) / (0.25 * weight_n))
        r_height = support * w_height * math.exp(-(((height - stand_height_m) / 0.05) ** 2))
        r_rate = w_rate * action_rate
        r_torque = w_torque * float(force.dot(force))
        terms = {"upright": r_upright, "feet_loaded": r_feet, "height": r_height,
                 "action_rate": r_rate, "torque": r_torque, "alive": w_alive}
        reward = r_upright + r_feet + r_height + r_rate + r_torque + w_alive  # sum(terms.values())
        # The daemon's fall rule fired, the torso sank below ~45% of standing height, or the
        # physics blew up (MuJoCo then resets the data itself and counts a warning).
        terminated = fell or height < min_height_m or any(blowup_warnings.tolist())
        load = tension / weight_n
        self._score.add(up_z, load, terminated)
        if self._stay_up is not None:
            self._stay_up.add(up_z, load, terminated)
        truncated = steps >= self.max_steps
        info = self._info(terms, tension, up_z, height)
        if terminated or truncated:
            info["task"] = self._score.summary()
            if self._stay_up is not None:
                info["task"].update(self._stay_up.summary())
        return obs, reward, terminated, truncated, info

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

    def _initial_pose_rad(self, rng: np.random.Generator) -> np.ndarray:
        """A random bent pose: crouch (hips and ankles forward, knees bent) + noise, clamped."""
        cfg, cal = self.config, self.calibration
        offset = rng.uniform(-cfg.pose_noise, cfg.pose_noise, self.spec_obs.n_actions)
        depth = rng.uniform(*cfg.crouch_depth)
        for name, i in self._leg_idx.items():
            offset[i] += depth if name.endswith("knee") else -0.5 * depth
        pose = cal.nominal_rad.copy()
        pose[self.spec_obs.joint_index] += INITIAL_POSE_SCALE_RAD * np.clip(offset, -1.0, 1.0)
        return cal.clamp_angles(pose)

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

    def _command(self, action: np.ndarray) -> None:
        """The daemon's action path: targets, slew limit, clamp, pulses, deadband -> servo targets."""
        cal = self.calibration
        targets = self.spec_obs.targets_rad(action, cal.nominal_rad)
        self._commanded_rad = limit_targets(cal, self._commanded_rad, targets, self._max_step_rad).commanded_rad
        pulses, changed = pulses_to_send(cal, self._commanded_rad, self._sent_us)
        if changed.any():
            self._sent_us[changed] = pulses[changed]
            self.data.ctrl[:] = cal.pulses_to_angles(self._sent_us)

    def _disturb(self, step: int) -> None:
        """The task's disturbances for control step ``step``: string let out, pushes on the torso."""
        let_out = self.config.string_let_out
        if let_out is not None:
            self.biped.set_string_length(self._base_string_length_m
                                         + let_out.extra_length_m(step / self.config.control_hz))
        force = self._torso_force
        force[:] = 0.0
        for start, ticks, push in self._pushes:
            if start <= step < start + ticks:
                force[:] = push.force_xy_n

    def _observation(self) -> np.ndarray:
        quat, gyro = self.phone.read_torso_floats()
        return self.spec_obs.build_from_floats(quat, gyro, self.history)

    def _measure(self) -> tuple[float, float, float, float, float]:
        """The privileged state the reward, termination and info use, read once per step and at reset:
        (torso up-z, IMU site height m, string tension N, right sole force N, left sole force N).

        Plain floats in a tuple, not a record: this runs on every step (``bench/sim_speed.py``).
        """
        privileged = self._privileged
        if privileged is not None:
            tension, right, left = privileged.tolist()
            tension = abs(tension)
        else:
            d, b = self.data, self.biped
            tension, (right, left) = b.string_tension_n(d), b.sole_forces_n(d)
        return self._torso_xmat.item(8), self._imu_xpos.item(2), tension, right, left

    @staticmethod
    def _info(terms: dict[str, float], tension_n: float, up_z: float, height_m: float) -> dict[str, Any]:
        return {"reward_terms": terms, "string_tension_n": tension_n, "torso_up_z": up_z, "torso_height_m": height_m}


class BipedBalanceDiscreteEnv(BipedBalanceEnv):
    """The same task with one of ``n_bins`` levels per joint (for Q-learning)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.action_space = gym.spaces.MultiDiscrete([self.spec_obs.n_bins] * self.spec_obs.n_actions)
        self._levels = self.spec_obs.bin_levels()

    def step(self, action):
        # ObservationSpec.discrete_to_action, with the levels computed once.
        return super().step(self._levels[np.asarray(action, dtype=np.int64)])
