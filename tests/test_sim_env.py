"""The gymnasium env: API compliance, observation contract, reproducibility, termination."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim.envs  # noqa: F401  (registers the env ids)
from sim.env import BipedBalanceEnv, EnvConfig
from sim.model import DomainRandomization
from sim.observation import ObservationSpec, gravity_in_torso
from sim.phone_model import PhoneConfig


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


def test_actions_become_clamped_servo_targets():
    env = _ideal_env()
    env.reset(seed=0)
    action = np.ones(env.spec_obs.n_actions, dtype=np.float32)
    env.step(action)
    cal = env.calibration
    expected = cal.clamp_angles(env.spec_obs.targets_rad(action, cal.nominal_rad))
    np.testing.assert_allclose(env.data.ctrl, expected)


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
    assert set(terms) == {"upright", "self_support", "feet_loaded", "height", "action_rate", "torque", "alive"}
    assert reward == pytest.approx(sum(terms.values()))


def test_falls_terminate_the_episode():
    env = _ideal_env()
    env.set_string_length(env.biped.free_string_length_m)
    env.reset(seed=0)
    env.data.qvel[0] = 1.0  # a shove: 1 m/s forwards
    for _ in range(100):
        _, _, terminated, truncated, info = env.step(np.zeros(env.spec_obs.n_actions, dtype=np.float32))
        if terminated:
            break
    assert terminated and not truncated
    assert info["torso_up_z"] < 0.5 or info["torso_height_m"] < 0.45 * env.biped.stand_height_m


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
