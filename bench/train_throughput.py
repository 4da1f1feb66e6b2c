"""Where a training run's time goes: robotd train's env steps/s and updates/s beside the baselines.

Measured in one run on the same machine, one after the other:

1. raw env steps/s: ``robotd/BalanceTaskDiscrete-v0`` stepped with random actions, one process;
2. acting alone: one actor (env + torch-free runtime + exploration + sequence cutting), in-process;
3. one learner update (batch x sequence of the default config), alone, in updates/s, with the
   WKV as one compiled scan and, as the baseline, as the chunked torch form it replaced;
4. ``robotd train --sim`` for ``--seconds`` after its learning starts: env steps/s and updates/s;
5. stable-baselines3 PPO (MLP 128x128, 2 envs in subprocesses, default n_steps/epochs) on the
   same env with Box actions, env steps/s including its updates (skipped if SB3 is missing).

    python bench/train_throughput.py [--seconds 60]

Prints one line per figure and the ratios; docs/learning.md has the numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def raw_env_steps_per_s(seconds: float) -> float:
    import gymnasium as gym

    import sim.envs  # noqa: F401

    env = gym.make("robotd/BalanceTaskDiscrete-v0").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, _ = env.step(rng.integers(0, 5, env.action_space.shape))
        n += 1
        if term or trunc:
            env.reset()
    return n / (time.perf_counter() - t0)


def actor_steps_per_s(seconds: float) -> float:
    from policies.actors import Actor
    from policies.networks import numpy_weights
    from policies.qlearning import Learner, QLearningConfig

    with tempfile.TemporaryDirectory() as tmp:
        learner = Learner(QLearningConfig(num_envs=1), Path(tmp))
        actor = Actor(learner.actor_spec(), 0)
        actor.set_weights(numpy_weights(learner.online))
        actor.run(100, 0.1)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            actor.run(200, 0.1)
            n += 200
        return n / (time.perf_counter() - t0)


def learner_updates_per_s(seconds: float, wkv: str = "scan") -> tuple[float, int]:
    """Updates/s of one learner on the default config; ``wkv="autograd"`` runs the WKV as the
    chunked torch form (:func:`policies.rwkv.wkv_parallel`, what training used before the scan)."""
    import policies.rwkv as rwkv
    from policies.actors import Actor
    from policies.networks import numpy_weights
    from policies.qlearning import Learner, QLearningConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = QLearningConfig(num_envs=1)
        learner = Learner(cfg, Path(tmp))
        actor = Actor(learner.actor_spec(), 0)
        actor.set_weights(numpy_weights(learner.online))
        seqs, _ = actor.run(3000, 0.3)
        for s in seqs:
            learner.replay.add(s)
        scan = rwkv.wkv_scan
        rwkv.wkv_scan = rwkv.wkv_parallel if wkv == "autograd" else scan
        try:
            learner.update()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                learner.update()
                n += 1
        finally:
            rwkv.wkv_scan = scan
        return n / (time.perf_counter() - t0), cfg.batch_size * cfg.train_len


def robotd_train(seconds: float) -> tuple[float, float]:
    """Steady-state env steps/s and updates/s of ``robotd train --sim`` (from its metrics.csv)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text("learning_starts = 5000\neval_every_steps = 20000\neval_episodes = 2\n")
        minutes = (seconds + 20) / 60
        subprocess.run([sys.executable, "-m", "robotd.cli", "train", "--sim", "--minutes", f"{minutes:.3f}",
                        "--out", str(Path(tmp) / "run"), "--config", str(config), "--no-progress"],
                       check=True, capture_output=True, cwd=REPO)
        rows = (Path(tmp) / "run" / "metrics.csv").read_text().splitlines()[1:]
    cols = [r.split(",") for r in rows]
    # Skip the untrained network's eval at step 0 and the first interval (start-up and the
    # no-update phase before learning_starts).
    steady = cols[2:] or cols
    return float(np.median([float(c[11]) for c in steady])), float(np.median([float(c[12]) for c in steady]))


def _balance_task_env():
    """The balance task with Box actions, made inside SB3's worker process (which must register it)."""
    import gymnasium as gym

    import sim.envs  # noqa: F401

    return gym.make("robotd/BalanceTask-v0")


def sb3_ppo_steps_per_s(seconds: float) -> float | None:
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import SubprocVecEnv
    except ImportError:
        return None
    import torch

    torch.set_num_threads(1)
    env = make_vec_env(_balance_task_env, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    model = PPO("MlpPolicy", env, policy_kwargs={"net_arch": [128, 128]}, seed=0, verbose=0)
    model.learn(4096)  # warm-up: one rollout + update
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        model.learn(4096, reset_num_timesteps=False)
        steps += 4096
    env.close()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time of each figure")
    parser.add_argument("--only-ppo", action="store_true", help="measure SB3 PPO only")
    args = parser.parse_args()
    if args.only_ppo:
        print(f"SB3 PPO MLP 128x128, 2 subprocess envs: {sb3_ppo_steps_per_s(args.seconds):.0f} env steps/s incl. updates")
        return
    s = args.seconds
    raw = raw_env_steps_per_s(min(s, 20))
    print(f"raw env (random actions, 1 process):      {raw:8.0f} env steps/s")
    acting = actor_steps_per_s(min(s, 20))
    print(f"one actor (env + runtime + exploration):  {acting:8.0f} env steps/s  ({acting / raw:.2f} of raw env)")
    ups, samples = learner_updates_per_s(min(s, 20))
    print(f"learner alone (1 thread):                 {ups:8.1f} updates/s ({ups * samples:.0f} trained steps/s)")
    before, _ = learner_updates_per_s(min(s, 20), wkv="autograd")
    print(f"learner alone, WKV in chunked torch ops:  {before:8.1f} updates/s (the scan is {ups / before:.2f}x)")
    steps, updates = robotd_train(s)
    print(f"robotd train --sim (2 actors + learner):  {steps:8.0f} env steps/s, {updates:.1f} updates/s "
          f"({steps / raw:.2f} x one raw env)")
    ppo = sb3_ppo_steps_per_s(s)
    if ppo is None:
        print("stable-baselines3 not installed: PPO skipped (pip install -e '.[bench]')")
    else:
        print(f"SB3 PPO MLP 128x128, 2 subprocess envs:   {ppo:8.0f} env steps/s incl. updates  "
              f"(robotd train / PPO = {steps / ppo:.2f})")


if __name__ == "__main__":
    main()
