"""The gymnasium env: API compliance, observation contract, reproducibility, termination."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim.envs  # noqa: F401  (registers the env ids)
from sim.env import BipedBalanceEnv, EnvConfig
from sim.model import DomainRandomization
from sim.observation import ActionHistory, ObservationSpec, gravity_in_torso, quat_to_matrix
from sim.phone_model import PhoneConfig
from sim.servo_command import holds_frame
from robotd.daemon.policy_tick import PolicyTick
from sim.rotations import torso_from_phone


@pytest.mark.parametrize("env_id", sorted(sim.envs.ENV_IDS))
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_spaces_follow_the_observation_spec():
    spec = ObservationSpec()
    env = gym.make("robotd/BipedBalance-v0")
    assert env.observation_space.shape == (spec.size,)
    assert env.action_space.shape == (spec.n_actions,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    discrete = gym.make("robotd/BipedBalanceDiscrete-v0")
    assert list(discrete.action_space.nvec) == [spec.n_bins] * spec.n_actions


def _ideal_env(**kwargs) -> BipedBalanceEnv:
    """Nominal physics, a perfect phone: the observation must equal the true state."""
    return BipedBalanceEnv(EnvConfig(randomization=DomainRandomization.none(), phone=PhoneConfig.ideal(),
                                     tilt_deg=0.0, crouch_depth=(0.0, 0.0), pose_noise=0.0, **kwargs))


def test_observation_layout_upright_gravity_and_history():
    env = _ideal_env()
    spec = env.spec_obs
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[0:3], [0.0, 0.0, -1.0], atol=0.03)  # upright torso
    torso_quat = env.data.xquat[env.biped.torso_id]
    np.testing.assert_allclose(obs[0:3], gravity_in_torso(torso_quat), atol=1e-4)
    action = np.linspace(-1, 1, spec.n_actions).astype(np.float32)
    obs, *_ = env.step(action)
    np.testing.assert_allclose(obs[6:6 + spec.n_actions], action, atol=1e-6)  # newest first
    gyro_phone = env.data.sensor("phone_gyro").data
    np.testing.assert_allclose(obs[3:6], env.calibration.phone_to_torso @ gyro_phone * spec.gyro_scale, atol=1e-6)


def _servo_targets(env: BipedBalanceEnv) -> np.ndarray:
    """What every servo pulls towards: the angle of the pulse the (simulated) board last got."""
    return env.calibration.pulses_to_angles(env._sent_us)


def test_non_adjacent_controlled_joints():
    """Controlled servos need not be neighbours; the others hold their nominal pulse."""
    spec = ObservationSpec(controlled_joints=("r_knee", "neck_yaw", "l_elbow"))
    env = BipedBalanceEnv(EnvConfig(obs_spec=spec, crouch_depth=(0.0, 0.0), pose_noise=0.0))
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    cal = env.calibration
    nominal_us = np.rint(cal.angles_to_pulses(cal.nominal_rad))
    free = np.setdiff1d(np.arange(17), spec.joint_index)
    for action, recorded in (([1.0, -1.0, 0.5], [1.0, -1.0, 0.5]), ([0.2, 3.0, -0.25], [0.2, 1.0, -0.25])):
        obs, *_ = env.step(np.array(action, dtype=np.float32))
        np.testing.assert_array_equal(env._sent_us[free], nominal_us[free])
        np.testing.assert_array_equal(env.data.ctrl, _servo_targets(env))
        np.testing.assert_array_equal(obs[6:9], np.array(recorded, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_action_holds_the_whole_frame_as_the_daemon_does(bad: float) -> None:
    """One non-finite component: nothing is sent and the commanded pose stays (not that joint
    at nominal and the others followed), the history records zeros, as the daemon's PolicyTick
    pushes for the NaN frame it refuses to follow, and targets_rad gives the NaN frame that
    Safety.send holds."""
    env = BipedBalanceEnv()
    spec = env.spec_obs
    env.reset(seed=3)
    env.step(np.full(spec.n_actions, 0.5))
    sent_us, commanded_rad = env._sent_us.copy(), env._commanded_rad.copy()
    action = np.full(spec.n_actions, -0.5)
    action[2] = bad
    obs, *_ = env.step(action)
    np.testing.assert_array_equal(env._sent_us, sent_us)
    np.testing.assert_array_equal(env._commanded_rad, commanded_rad)
    np.testing.assert_array_equal(obs[6:6 + spec.n_actions], np.zeros(spec.n_actions, dtype=np.float32))
    assert np.all(np.isnan(spec.targets_rad(action, env.calibration.nominal_rad)))
    tick = PolicyTick(_Constant(action), spec, on_refused=lambda problem: None)
    step = tick.step(True, np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(3), lambda: np.zeros(spec.n_actions))
    assert np.all(np.isnan(step.action))
    np.testing.assert_array_equal(tick.history.flat()[:spec.n_actions], np.zeros(spec.n_actions))


def test_holds_frame_is_exact() -> None:
    """Held: any NaN or infinity; followed: finite values whose sum overflows included."""
    assert not holds_frame(np.array([1e308, 1e308, -0.0])) and not holds_frame(np.zeros(3))
    assert holds_frame(np.array([0.0, np.nan])) and holds_frame(np.array([np.inf, -np.inf]))
    assert holds_frame(np.array([1e308, 1e308, np.nan])) and holds_frame(np.float32([0, np.inf]))


class _Constant:
    """A policy that always says ``action``."""

    name = identity = "constant"

    def __init__(self, action: np.ndarray) -> None:
        self.action = action

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.action


class _Recorder:
    """Wraps PhoneModel.read_torso_floats and keeps what the env was given, as float64 arrays."""

    def __init__(self, read):
        self.read, self.calls = read, []

    def __call__(self):
        quat, gyro = self.read()
        self.calls.append((np.array(quat, dtype=np.float64), np.array(gyro, dtype=np.float64)))
        return quat, gyro


def _reference_build(spec: ObservationSpec, quat, gyro, history: list[np.ndarray]) -> np.ndarray:
    """ObservationSpec.build as first written (kept here to pin its values)."""
    w, x, y, z = (float(v) for v in quat)
    obs = np.empty(spec.size, dtype=np.float32)
    obs[0:3] = -np.array([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])
    obs[3:6] = np.asarray(gyro) * spec.gyro_scale
    obs[6:] = np.concatenate(history[:spec.action_history]).astype(np.float32) if spec.action_history else []
    return obs


def test_observations_are_exactly_what_the_contract_builds():
    env = BipedBalanceEnv()
    spec = env.spec_obs
    env.phone.read_torso_floats = recorder = _Recorder(env.phone.read_torso_floats)
    rng = np.random.default_rng(5)
    obs, _ = env.reset(seed=5)
    history = [np.asarray(env.history.flat()[i * spec.n_actions:(i + 1) * spec.n_actions]).copy()
               for i in range(spec.action_history)]
    np.testing.assert_array_equal(obs, _reference_build(spec, *recorder.calls[-1], history))
    kept = []
    for k in range(30):
        action = rng.uniform(-1.5, 1.5, spec.n_actions)
        if k % 7 == 3:
            action[k % spec.n_actions] = np.nan
        obs, *_ = env.step(action)
        kept.append(obs)
        held = not np.all(np.isfinite(action))  # the whole frame held: the history records zeros
        history.insert(0, (np.zeros(spec.n_actions) if held else np.clip(action, -1, 1)).astype(np.float32))
        expected = _reference_build(spec, *recorder.calls[-1], history)
        np.testing.assert_array_equal(obs, expected)
        np.testing.assert_array_equal(obs, spec.build(*recorder.calls[-1], env.history))
    assert len({id(o) for o in kept}) == len(kept)  # the caller may keep every observation


@pytest.mark.filterwarnings("error")
def test_contract_fast_paths_give_the_same_values():
    """targets_rad, build and gravity_in_torso against their first versions, bit for bit."""
    spec, rng = ObservationSpec(), np.random.default_rng(1)
    nominal = rng.uniform(-0.5, 0.5, 17)
    cases = [rng.uniform(-2, 2, spec.n_actions) for _ in range(20)]
    cases += [np.array([np.nan, np.inf, -np.inf, -0.0, 0.3, 1e308, 1e308, -2, 2, 0.5]),
              rng.uniform(-2, 2, spec.n_actions).astype(np.float32), list(np.linspace(-1.2, 1.2, spec.n_actions)),
              np.float64(0.7), np.array(np.nan), 5.0]
    for action in cases:
        before = np.array(action, copy=True)
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        expected = nominal.copy()
        expected[spec.joint_index] += spec.action_scale_rad * a  # a non-finite action: all NaN (held)
        if not np.all(np.isfinite(action)):
            expected[:] = np.nan
        np.testing.assert_array_equal(spec.targets_rad(action, nominal), expected)
        np.testing.assert_array_equal(np.asarray(action), before)  # the caller's action is not written
    assert spec.targets_rad(np.ones(spec.n_actions), nominal).dtype == np.float64
    history = ActionHistory(spec)
    for _ in range(3):
        history.push(rng.uniform(-1, 1, spec.n_actions))
    hist = [history.flat()[i * spec.n_actions:(i + 1) * spec.n_actions].copy() for i in range(spec.action_history)]
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        g = rng.normal(0, 5, 3)
        for quat, gyro in ((q, g), (q.astype(np.float32), g.astype(np.float32)), (tuple(q), list(g))):
            expected = _reference_build(spec, quat, gyro, hist)
            np.testing.assert_array_equal(spec.build(quat, gyro, history), expected)
            out = np.full(spec.size, np.nan, dtype=np.float32)
            assert spec.build(quat, gyro, history, out=out) is out
            np.testing.assert_array_equal(out, expected)
            w, x, y, z = (float(v) for v in quat)
            np.testing.assert_array_equal(
                gravity_in_torso(quat), -np.array([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]))


def _rollout(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    env = BipedBalanceEnv()
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    observations, rewards = [obs], []
    for _ in range(n):
        obs, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.spec_obs.n_actions))
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards)


def test_same_seed_same_trajectory():
    obs_a, rew_a = _rollout(seed=7)
    obs_b, rew_b = _rollout(seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    obs_c, _ = _rollout(seed=8)
    assert not np.array_equal(obs_a[:5], obs_c[:5])


def test_a_seed_starts_every_policy_in_the_same_pose():
    """The initial crouch is in radians, not in the policy's action units: a policy with its own
    action scale and stance starts where hold and pd do, and its history says so."""
    plain = BipedBalanceEnv(EnvConfig())
    spec = ObservationSpec(action_scale_rad=0.12, stance_rad=(0.05,) * 10)
    own = BipedBalanceEnv(EnvConfig(obs_spec=spec))
    plain.reset(seed=7)
    obs, _ = own.reset(seed=7)
    np.testing.assert_array_equal(own.data.qpos, plain.data.qpos)
    commanded = own.data.qpos[own.biped.qpos_adr]
    expected = spec.pose_action(commanded, own.calibration.nominal_rad)
    np.testing.assert_allclose(obs[6:6 + spec.n_actions], expected, atol=0.02)  # float32, and the servos' sag


def test_reset_hangs_from_the_string_and_lengthening_unloads_it():
    env = BipedBalanceEnv()
    _, info = env.reset(seed=3)
    assert info["string_tension_n"] > 0.2 * env.biped.weight_n
    env.set_string_length(env.biped.free_string_length_m)
    _, info = env.reset(seed=3)
    assert info["string_tension_n"] == 0.0


def test_reward_terms_are_reported_and_sum_to_the_reward():
    env = BipedBalanceEnv()
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(env.spec_obs.n_actions, dtype=np.float32))
    terms = info["reward_terms"]
    assert set(terms) == {"upright", "feet_loaded", "height", "action_rate", "torque", "alive"}
    assert reward == pytest.approx(sum(terms.values()))


def test_the_class_docstring_states_the_reward_the_step_pays():
    """The docstring's reward table is the spec: one row per term in info, with its weight."""
    from sim.env import RewardWeights

    doc = BipedBalanceEnv.__doc__
    table = doc[doc.index("## Rewards"):doc.index("## Episode end")]
    rows = {cells[0]: float(cells[2]) for cells in
            ([c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
             if line.strip().startswith("| ") and not line.strip().startswith(("| term", "|---")))}
    env = BipedBalanceEnv()
    env.reset(seed=0)
    *_, info = env.step(np.zeros(env.spec_obs.n_actions, dtype=np.float32))
    assert set(rows) == set(info["reward_terms"])
    weights = RewardWeights()
    assert rows == {name: getattr(weights, name) for name in rows}


def test_falls_end_the_episode_on_the_daemons_fall_rule():
    """Terminated on the tick the observed tilt has been beyond 45 degrees for 3 ticks, not at 60."""
    env = BipedBalanceEnv(EnvConfig())  # the full phone model: the rule judges what the policy sees
    env.set_string_length(env.biped.free_string_length_m)
    rule = env.calibration.safety
    for seed in range(3):
        env.reset(seed=seed)
        env.data.qvel[0] = 1.0  # a shove: 1 m/s forwards
        tilted_run, fired_at = 0, None
        for k in range(150):
            obs, _, terminated, truncated, info = env.step(np.zeros(env.spec_obs.n_actions, dtype=np.float32))
            tilted_run = tilted_run + 1 if np.degrees(np.arccos(np.clip(-obs[2], -1, 1))) > rule.fall_tilt_deg \
                else 0
            if fired_at is None and tilted_run >= rule.fall_ticks:
                fired_at = k
            if terminated:
                break
        assert terminated and not truncated and k == fired_at, (seed, k, fired_at)
        assert info["task"]["fell"] and not info["task"]["success"]


def test_blown_up_physics_terminates():
    env = BipedBalanceEnv()
    env.reset(seed=0)
    env.data.qvel[:] = np.nan
    *_, terminated, _, _ = env.step(np.zeros(env.spec_obs.n_actions, dtype=np.float32))
    assert terminated


def test_truncates_at_the_configured_length():
    env = BipedBalanceEnv(EnvConfig(episode_s=0.1))
    env.reset(seed=0)
    results = [env.step(np.zeros(env.spec_obs.n_actions, dtype=np.float32)) for _ in range(5)]
    assert [r[3] for r in results] == [False] * 4 + [True]


def test_fixed_actuator_delay_option():
    env = BipedBalanceEnv(EnvConfig(actuator_delay_ms=120.0))
    env.reset(seed=0)
    assert env.model.actuator_delay == pytest.approx(np.full(env.model.nu, 0.12))


def test_discrete_actions_map_to_bin_levels():
    env = gym.make("robotd/BipedBalanceDiscrete-v0").unwrapped
    obs, _ = env.reset(seed=0)
    n = env.spec_obs.n_actions
    obs, *_ = env.step(np.full(n, env.spec_obs.n_bins - 1))
    np.testing.assert_allclose(obs[6:6 + n], np.ones(n))


def test_render_rgb_array():
    env = BipedBalanceEnv(render_mode="rgb_array", render_size=(48, 64))
    env.reset(seed=0)
    frame = env.render()
    env.close()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_action_history_is_the_last_k_actions_newest_first(k):
    spec = ObservationSpec(action_history=k)
    history, expected = ActionHistory(spec), [np.zeros(spec.n_actions, dtype=np.float32)] * k
    rng = np.random.default_rng(k)
    for i in range(300):  # several trips of the window through its buffer, and a reset midway
        if i == 150:
            history.reset()
            expected = [np.zeros(spec.n_actions, dtype=np.float32)] * k
        action = rng.normal(size=spec.n_actions)
        history.push(action)
        expected = ([action.astype(np.float32)] + expected)[:k]
        flat = history.flat()
        assert flat.dtype == np.float32 and flat.shape == (k * spec.n_actions,)
        np.testing.assert_array_equal(flat, np.concatenate(expected) if k else [])


def test_phone_torso_reading_is_torso_from_phone():
    """The env's float path reads what the daemon's mount inversion gives for the same sample."""
    env = BipedBalanceEnv()
    env.reset(seed=2)
    phone = env.phone
    rng = np.random.default_rng(2)
    for _ in range(50):
        env.step(rng.uniform(-1, 1, env.spec_obs.n_actions))
        i = phone._noise_i
        quat, gyro = phone.read_torso_floats()
        phone._noise_i = i
        expected_quat, expected_gyro = torso_from_phone(*phone.read_phone(), env.calibration.phone_to_torso)
        np.testing.assert_array_equal(quat, expected_quat)
        np.testing.assert_allclose(gyro, expected_gyro, rtol=0, atol=1e-12)
        phone._noise_i = i
        np.testing.assert_array_equal(np.concatenate(phone.read_torso()), np.array(quat + gyro))


def test_mount_error_turns_the_phone_away_from_the_calibrated_mount():
    """The imu site really is turned by the drawn error (MuJoCo ignores site_quat on a site it
    compiled as "same frame as its body" unless that flag is cleared), and the policy sees it."""
    phone = PhoneConfig(rate_hz=None, latency_ms=(0.0, 0.0), gyro_bias_std_rad_s=0.0, gyro_noise_std_rad_s=0.0,
                        mount_error_deg=3.0)
    env = BipedBalanceEnv(EnvConfig(phone=phone, randomization=DomainRandomization.none()))
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        m, d, site = env.model, env.data, env.biped.imu_site_id
        body = m.site_bodyid[site]
        relative = d.xmat[body].reshape(3, 3).T @ d.site_xmat[site].reshape(3, 3)
        np.testing.assert_allclose(relative, quat_to_matrix(m.site_quat[site]), atol=1e-9)
        error_deg = np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1)))
        assert 0.1 < error_deg <= 3.0 * np.sqrt(3) + 1e-9
        true_gravity = gravity_in_torso(d.xquat[env.biped.torso_id])
        seen_deg = np.degrees(np.arccos(np.clip(np.dot(obs[0:3], true_gravity), -1, 1)))
        assert 0.05 < seen_deg <= error_deg + 0.01


def _episode(env: BipedBalanceEnv, seed: int, action_of=lambda env, obs: np.zeros(env.spec_obs.n_actions),
             shove_m_s: float = 0.0) -> tuple[float, int, dict]:
    obs, _ = env.reset(seed=seed)
    env.data.qvel[0] = shove_m_s
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(action_of(env, obs))
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            return total, steps, info


def test_standing_on_its_own_feet_earns_more_than_hanging_or_falling():
    """Per episode and per step: standing > hanging on the string > falling (balance task, no pushes)."""
    from sim.env import balance_task_config

    crouch = dict(crouch_depth=(1.0, 1.0), pose_noise=0.0, tilt_deg=0.0)
    stand_env = BipedBalanceEnv(balance_task_config(pushes=None, **crouch))
    # Hanging: the string stays taut and the policy keeps the deep crouch, feet off the floor.
    hang_env = BipedBalanceEnv(balance_task_config(pushes=None, string_let_out=None, **crouch))
    fall_env = BipedBalanceEnv(balance_task_config(pushes=None, string_let_out=None, **crouch))
    fall_env.set_string_length(fall_env.biped.free_string_length_m)
    for seed in (0, 1):
        stand, stand_steps, stand_info = _episode(stand_env, seed)
        hang_env.reset(seed=seed)
        action = hang_env.history.flat()[:hang_env.spec_obs.n_actions].copy()  # the start's crouch
        hang, hang_steps, hang_info = _episode(hang_env, seed, lambda env, obs: action)
        fall, fall_steps, fall_info = _episode(fall_env, seed, shove_m_s=1.0)
        assert stand_info["task"]["success"] and stand_steps == hang_steps == stand_env.max_steps
        assert hang_info["task"]["mean_string_load"] > 0.5 and not hang_info["task"]["success"]
        assert fall_info["task"]["fell"] and fall_steps < 100
        print(f"seed {seed}: return standing {stand:.0f}, hanging {hang:.0f}, falling {fall:.0f}")
        assert stand > 1.5 * hang > 1.5 * fall, (stand, hang, fall)
        assert stand / stand_steps > 1.5 * hang / hang_steps, (stand / stand_steps, hang / hang_steps)
