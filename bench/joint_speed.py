"""How fast the simulated leg joints move under a bang-bang policy (the slew limit's effect).

A policy that jumps each joint between -1 and +1 (new random sign every 3 ticks) asks for far
more than ``safety.max_slew_rad_s``; on the robot Safety slows every commanded joint to that
rate, so the simulator must too. Prints the p50/p99/max of the leg joints' speed and of the servo
targets (ctrl), sampled at every control tick, over a few seeded episodes of ``robotd/BipedBalance-v0``.

    python bench/joint_speed.py [--episodes 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from calibration import load_calibration
from sim.env import BipedBalanceEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    args = parser.parse_args()
    cal = load_calibration()
    env = BipedBalanceEnv()
    dof = env.biped.dof_adr[env.spec_obs.joint_index]
    rng = np.random.default_rng(0)
    speeds, target_speeds = [], []
    for episode in range(args.episodes):
        env.reset(seed=1000 + episode)
        action = np.zeros(env.spec_obs.n_actions)
        for t in range(env.max_steps):
            if t % 3 == 0:
                action = rng.choice([-1.0, 1.0], env.spec_obs.n_actions)
            before = env.data.ctrl[env.spec_obs.joint_index].copy()
            *_, terminated, truncated, _ = env.step(action)
            speeds.append(np.abs(env.data.qvel[dof]))
            target_speeds.append(np.abs(env.data.ctrl[env.spec_obs.joint_index] - before) * env.config.control_hz)
            if terminated or truncated:
                break
    print(f"bang-bang actions, {len(speeds)} ticks of {args.episodes} episodes; slew limit "
          f"{cal.safety.max_slew_rad_s} rad/s")
    for name, values in (("servo target", target_speeds), ("leg joint", speeds)):
        s = np.concatenate(values)
        print(f"{name:>12} speed: p50 {np.percentile(s, 50):.2f} p99 {np.percentile(s, 99):.2f} "
              f"max {s.max():.2f} rad/s")


if __name__ == "__main__":
    main()
