"""Env steps/s against the physics-bound rate (raw mj_step on the same model and states).

Usage: python bench/sim_speed.py [--steps 2000] [--repeats 5] [--seed 0]

The env comes from ``gymnasium.make("robotd/BipedBalance-v0", ...)``. Each repeat resets it
and times, in interleaved chunks (see :func:`_time_variants`), three things on the same
states: ``env.unwrapped.step`` (the env itself), ``env.step`` (through gymnasium's default
wrappers, PassiveEnvChecker + OrderEnforcing) and raw ``mj_step(nstep=substeps)`` with the
ctrl the env's zero action commands. The physics-bound env rate is raw mj_step rate /
substeps; ratios are env rate / physics-bound rate, taken per repeat from chunks timed side
by side, and the table reports medians over the repeats. The 0.9 target applies to the
unwrapped env (the wrappers are gymnasium's, not ours; they are reported for reference).
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


def _time_variants(wrapped: gym.Env, n_steps: int) -> dict[str, float]:
    """Seconds for n control steps of each variant (unwrapped, wrapped, raw), interleaved.

    Each round of chunks starts all three from the same state (the unwrapped env's chunk
    start), in a rotating order so that load from other processes and cache warmth hit them
    alike; afterwards the unwrapped chunk's end state is restored and the next round goes on
    from there.
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
    seconds = dict.fromkeys(names, 0.0)
    for k in range(0, n_steps, _CHUNK):
        mujoco.mj_getState(model, data, start, spec)
        rot = (k // _CHUNK) % len(names)
        for name in names[rot:] + names[:rot]:
            mujoco.mj_setState(model, data, start, spec)
            t0 = clock()
            variants[name]()
            seconds[name] += clock() - t0
            if name == "unwrapped":
                mujoco.mj_getState(model, data, end, spec)
        mujoco.mj_setState(model, data, end, spec)
    return seconds


def run(n_steps: int, repeats: int, seed: int) -> dict[str, float]:
    # Long episodes: the timed region never hits a truncation or a reset.
    wrapped = gym.make("robotd/BipedBalance-v0", config=EnvConfig(episode_s=1e6))
    substeps = wrapped.unwrapped.n_substeps
    n_steps = max(_CHUNK, n_steps // _CHUNK * _CHUNK)
    rows: dict[str, list[float]] = {k: [] for k in ("raw", "unwrapped", "wrapped", "ratio_unwrapped", "ratio_wrapped")}
    for r in range(repeats):
        wrapped.reset(seed=seed + r)
        s = _time_variants(wrapped, n_steps)
        rows["raw"].append(n_steps * substeps / s["raw"])
        rows["unwrapped"].append(n_steps / s["unwrapped"])
        rows["wrapped"].append(n_steps / s["wrapped"])
        rows["ratio_unwrapped"].append(s["raw"] / s["unwrapped"])
        rows["ratio_wrapped"].append(s["raw"] / s["wrapped"])
    wrapped.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    bound = med["raw"] / substeps
    return {
        "substeps": substeps,
        "raw_mj_step_per_s": med["raw"],
        "physics_bound_env_steps_per_s": bound,
        "env_steps_per_s (unwrapped)": med["unwrapped"],
        "ratio (unwrapped)": med["ratio_unwrapped"],
        "python_us_per_step (unwrapped)": 1e6 * (1 / med["unwrapped"] - 1 / bound),
        "env_steps_per_s (gym.make wrappers)": med["wrapped"],
        "ratio (gym.make wrappers)": med["ratio_wrapped"],
        "python_us_per_step (gym.make wrappers)": 1e6 * (1 / med["wrapped"] - 1 / bound),
        "ratio_min (unwrapped)": min(rows["ratio_unwrapped"]),
        "ratio_max (unwrapped)": max(rows["ratio_unwrapped"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="control steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.steps, args.repeats, args.seed)
    print(f"{'metric (median over repeats)':<40}{'value':>10}")
    for key, value in result.items():
        text = f"{value:.0f}" if isinstance(value, int) or value > 100 else f"{value:.3f}"
        print(f"{key:<40}{text:>10}")
    met = result["ratio (unwrapped)"] >= TARGET_RATIO
    print(f"target ratio >= {TARGET_RATIO} (unwrapped env): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
