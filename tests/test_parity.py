"""The simulator and the daemon move the same robot: same action path, same fall rule.

The daemon's Safety runs against the board emulator over a real pty; the env steps MuJoCo.
Fed the same action sequence, both must command the same angles and send the same pulses
tick by tick, and the servos in the simulator must pull towards exactly those pulses.
"""

from __future__ import annotations

import numpy as np

from calibration import load_calibration
from robotd.board.link import SerialLink
from robotd.daemon.safety import Safety
from sim.board_emulator import BoardEmulator
from sim.env import BipedBalanceEnv, EnvConfig
from sim.observation import ObservationSpec
from sim.servo_command import FallRule

CAL = load_calibration()
RATE_HZ = 50.0
UPRIGHT = np.array([1.0, 0.0, 0.0, 0.0])


def _bang_bang(n_ticks: int, n_actions: int, seed: int = 0) -> list[np.ndarray]:
    """Random +-1 per joint held 3 ticks, with some out-of-range and NaN components."""
    rng = np.random.default_rng(seed)
    actions, a = [], np.zeros(n_actions)
    for t in range(n_ticks):
        if t % 3 == 0:
            a = rng.choice([-1.0, 1.0], n_actions) * rng.choice([1.0, 1.0, 0.3, 2.5], n_actions)
        b = a.copy()
        if t % 17 == 5:
            b[t % n_actions] = np.nan
        actions.append(b)
    return actions


def test_sim_and_daemon_command_the_same_targets_and_pulses():
    spec = ObservationSpec()
    # Start where the daemon starts after its start-up move: the nominal pose (action 0).
    env = BipedBalanceEnv(EnvConfig(crouch_depth=(0.0, 0.0), pose_noise=0.0), calibration=CAL)
    env.reset(seed=0)
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ)
        safety.open()
        now = 100.0
        safety.command(CAL.nominal_rad, UPRIGHT, 5.0, now)
        now += CAL.startup_move_ms / 1000.0 + 0.1
        slewed_ticks = 0
        for action in _bang_bang(150, spec.n_actions):
            targets = spec.targets_rad(action, CAL.nominal_rad)
            result = safety.command(targets, UPRIGHT, 5.0, now)
            now += 1.0 / RATE_HZ
            env.step(action)
            assert result.mode == "run"
            np.testing.assert_array_equal(env._commanded_rad, safety._commanded_rad)
            np.testing.assert_array_equal(env._sent_us, safety._sent_us)
            # The servos pull towards the angle of the last pulse the board got, nothing else.
            np.testing.assert_array_equal(env.data.ctrl, CAL.pulses_to_angles(env._sent_us))
            slewed_ticks += "slew" in result.flags
        assert slewed_ticks > 50  # the sequence really exercises the slew limit
        safety.shutdown()


def test_sim_servo_targets_never_move_faster_than_the_slew_limit():
    env = BipedBalanceEnv(calibration=CAL)
    env.reset(seed=1)
    max_step = CAL.safety.max_slew_rad_s / env.config.control_hz
    previous = env.data.ctrl.copy()
    for action in _bang_bang(200, env.spec_obs.n_actions, seed=1):
        *_, terminated, truncated, _ = env.step(action)
        step = np.abs(env.data.ctrl - previous)
        # A pulse is whole microseconds: at most half a microsecond of rounding either way.
        assert np.all(step <= max_step + 1.0 / np.abs(CAL.signed_us_per_rad) + 1e-12)
        previous = env.data.ctrl.copy()
        if terminated or truncated:
            env.reset(seed=2)
            previous = env.data.ctrl.copy()


def test_one_fall_rule_for_both():
    """Safety and the env hold a FallRule built from the same calibration keys."""
    rule = FallRule(CAL)
    up_z_tilted = np.cos(np.radians(CAL.safety.fall_tilt_deg + 1.0))
    up_z_upright = np.cos(np.radians(CAL.safety.fall_tilt_deg - 1.0))
    fired = [rule.update(z) for z in [up_z_tilted] * (CAL.safety.fall_ticks - 1) + [up_z_upright] +
             [up_z_tilted] * CAL.safety.fall_ticks]
    assert fired == [False] * CAL.safety.fall_ticks + [False] * (CAL.safety.fall_ticks - 1) + [True]
    env = BipedBalanceEnv(calibration=CAL)
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ)
        assert isinstance(env._fall_rule, FallRule) and isinstance(safety._fall_rule, FallRule)
        assert (env._fall_rule.min_up_z, env._fall_rule.fall_ticks) == (rule.min_up_z, rule.fall_ticks)
        assert (safety._fall_rule.min_up_z, safety._fall_rule.fall_ticks) == (rule.min_up_z, rule.fall_ticks)
