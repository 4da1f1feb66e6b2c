"""Env steps/s against the physics-bound rate (raw mj_step on the same model and states).

Usage: python bench/sim_speed.py [--steps 2000] [--repeats 5] [--seed 0]

Each repeat resets the env and times ``env.step`` (zero action) against raw
``mj_step(nstep=substeps)`` on the same states and ctrl, in interleaved chunks (see
:func:`_time_pair`). The physics-bound env rate
is raw mj_step rate / substeps; the table reports medians over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mujoco
import numpy as np

from sim.env import BipedBalanceEnv, EnvConfig

_CHUNK = 50  # control steps per timed chunk


def _time_pair(env: BipedBalanceEnv, n_steps: int, zero_targets: np.ndarray) -> tuple[float, float]:
    """Seconds for n env steps and for the same n control periods of raw mj_step, interleaved.

    Chunks alternate between the two so that load from other processes hits both alike;
    the raw chunk replays the env chunk's start state, then the env's end state is restored.
    """
    model, data, substeps = env.model, env.data, env.n_substeps
    spec = mujoco.mjtState.mjSTATE_INTEGRATION | mujoco.mjtState.mjSTATE_HISTORY
    start, end = (np.empty(mujoco.mj_stateSize(model, spec)) for _ in range(2))
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    step, mj_step, clock = env.step, mujoco.mj_step, time.perf_counter
    env_s = raw_s = 0.0
    for _ in range(0, n_steps, _CHUNK):
        mujoco.mj_getState(model, data, start, spec)
        t0 = clock()
        for _ in range(_CHUNK):
            step(action)
        env_s += clock() - t0
        mujoco.mj_getState(model, data, end, spec)
        mujoco.mj_setState(model, data, start, spec)
        data.ctrl[:] = zero_targets  # what the env's zero action commands: the same trajectory
        t0 = clock()
        for _ in range(_CHUNK):
            mj_step(model, data, substeps)
        raw_s += clock() - t0
        mujoco.mj_setState(model, data, end, spec)
    return env_s, raw_s


def run(n_steps: int, repeats: int, seed: int) -> dict[str, float]:
    # Long episodes: the timed region never hits a truncation or a reset.
    env = BipedBalanceEnv(EnvConfig(episode_s=1e6))
    substeps = env.n_substeps
    zero = np.zeros(env.action_space.shape)
    zero_targets = env.calibration.clamp_angles(env.spec_obs.targets_rad(zero, env.calibration.nominal_rad))
    env_rates, raw_rates = [], []
    for r in range(repeats):
        env.reset(seed=seed + r)
        env_s, raw_s = _time_pair(env, n_steps, zero_targets)
        env_rates.append(n_steps / env_s)
        raw_rates.append(n_steps * substeps / raw_s)
    env_rate = statistics.median(env_rates)
    raw_rate = statistics.median(raw_rates)
    return {
        "substeps": substeps,
        "raw_mj_step_per_s": raw_rate,
        "physics_bound_env_steps_per_s": raw_rate / substeps,
        "env_steps_per_s": env_rate,
        "ratio": env_rate / (raw_rate / substeps),
        "python_overhead_us_per_step": 1e6 * (1 / env_rate - substeps / raw_rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="control steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.steps, args.repeats, args.seed)
    print(f"{'metric':<34}{'median':>12}")
    for key, value in result.items():
        print(f"{key:<34}{value:>12.{0 if value > 100 else 3}f}")
    print(f"target ratio >= 0.90: {'met' if result['ratio'] >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
