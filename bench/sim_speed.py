"""Env steps/s against the physics-bound rate (raw mj_step on the same model and states).

Usage: python bench/sim_speed.py [--steps 2000] [--repeats 5] [--seed 0]

The env comes from ``gymnasium.make("robotd/BipedBalance-v0", ...)``. Each repeat resets it
and times, in rounds of interleaved 50-step chunks (see :func:`_time_rounds`), three things
on the same states: ``env.unwrapped.step`` (the env itself), ``env.step`` (through
gymnasium's default wrappers, PassiveEnvChecker + OrderEnforcing) and raw
``mj_step(nstep=substeps)`` with the ctrl the env's zero action commands. The physics-bound
env rate is raw mj_step rate / substeps. Every round gives a ratio (env rate / physics-bound
rate) from chunks timed within a few tens of milliseconds of each other, so load from other
processes mostly cancels; the table reports medians over all rounds of all repeats. The 0.9
target applies to the unwrapped env (the wrappers are gymnasium's, not ours; they are
reported for reference).
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import mujoco
import numpy as np

import sim.envs  # noqa: F401  (registers the env ids)
from sim.env import EnvConfig

_CHUNK = 50  # control steps per timed chunk
TARGET_RATIO = 0.9


def _time_rounds(wrapped: gym.Env, n_steps: int) -> dict[str, list[float]]:
    """Seconds per round for _CHUNK control steps of each variant (unwrapped, wrapped, raw).

    Each round starts all three from the same state (the unwrapped env's chunk start), in a
    rotating order so that cache warmth and load hit them alike; afterwards the unwrapped
    chunk's end state is restored and the next round goes on from there.
    """
    env = wrapped.unwrapped
    model, data, substeps = env.model, env.data, env.n_substeps
    spec = mujoco.mjtState.mjSTATE_INTEGRATION | mujoco.mjtState.mjSTATE_HISTORY
    start, end = (np.empty(mujoco.mj_stateSize(model, spec)) for _ in range(2))
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    mj_step, clock = mujoco.mj_step, time.perf_counter

    # The ctrl the zero action commands: take it from one env step, then undo that step.
    mujoco.mj_getState(model, data, start, spec)
    env.step(action)
    zero_ctrl = data.ctrl.copy()
    mujoco.mj_setState(model, data, start, spec)

    def unwrapped_chunk() -> None:
        step = env.step
        for _ in range(_CHUNK):
            step(action)

    def wrapped_chunk() -> None:
        step = wrapped.step
        for _ in range(_CHUNK):
            step(action)

    def raw_chunk() -> None:
        data.ctrl[:] = zero_ctrl
        for _ in range(_CHUNK):
            mj_step(model, data, substeps)

    variants = {"unwrapped": unwrapped_chunk, "wrapped": wrapped_chunk, "raw": raw_chunk}
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for k in range(n_steps // _CHUNK):
        mujoco.mj_getState(model, data, start, spec)
        rot = k % len(names)
        for name in names[rot:] + names[:rot]:
            mujoco.mj_setState(model, data, start, spec)
            t0 = clock()
            variants[name]()
            seconds[name].append(clock() - t0)
            if name == "unwrapped":
                mujoco.mj_getState(model, data, end, spec)
        mujoco.mj_setState(model, data, end, spec)
    return seconds


def run(n_steps: int, repeats: int, seed: int) -> dict[str, float]:
    # Long episodes: the timed region never hits a truncation or a reset.
    wrapped = gym.make("robotd/BipedBalance-v0", config=EnvConfig(episode_s=1e6))
    substeps = wrapped.unwrapped.n_substeps
    n_steps = max(_CHUNK, n_steps // _CHUNK * _CHUNK)
    rounds: dict[str, list[float]] = {"raw": [], "unwrapped": [], "wrapped": []}
    for r in range(repeats):
        wrapped.reset(seed=seed + r)
        for name, secs in _time_rounds(wrapped, n_steps).items():
            rounds[name] += secs
    wrapped.close()
    raw = np.array(rounds["raw"])
    med = statistics.median
    result: dict[str, float] = {
        "substeps": substeps,
        "rounds": len(raw),
        "raw_mj_step_per_s": med(_CHUNK * substeps / raw),
        "physics_bound_env_steps_per_s": med(_CHUNK / raw),
    }
    for name, label in (("unwrapped", "unwrapped"), ("wrapped", "gym.make wrappers")):
        env_s = np.array(rounds[name])
        ratios = raw / env_s
        result[f"env_steps_per_s ({label})"] = med(_CHUNK / env_s)
        result[f"ratio ({label})"] = med(ratios)
        result[f"ratio quartiles ({label})"] = tuple(np.percentile(ratios, [25, 75]))
        result[f"python_us_per_step ({label})"] = 1e6 * med((env_s - raw) / _CHUNK)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="control steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.steps, args.repeats, args.seed)
    print(f"{'metric (median over rounds)':<42}{'value':>14}")
    for key, value in result.items():
        if isinstance(value, tuple):
            text = " - ".join(f"{v:.3f}" for v in value)
        else:
            text = f"{value:.0f}" if isinstance(value, int) or value > 100 else f"{value:.3f}"
        print(f"{key:<42}{text:>14}")
    met = result["ratio (unwrapped)"] >= TARGET_RATIO
    print(f"target ratio >= {TARGET_RATIO} (unwrapped env): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
