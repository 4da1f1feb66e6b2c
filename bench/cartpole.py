"""Generality check: robotd train on CartPole-v1 beside SB3 DQN with rl-baselines3-zoo's hyperparameters.

Each seed trains for ``--steps`` env steps; the score is the mean return of 10 greedy episodes
(seeds 1000-1009) of the best checkpoint by the periodic greedy eval for robotd train (what
``robotd eval CKPT --env CartPole-v1`` prints), and of the final model for SB3 DQN (the zoo
reports its final model). The 500 cap is the best possible.

    python bench/cartpole.py [--steps 50000] [--seeds 0 1 2] [--arch rwkv4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EVAL_SEED, EVAL_EPISODES = 1000, 10

#: The zoo's DQN settings for CartPole-v1; robotd's are its shipped defaults (policies/env_defaults.toml).
ZOO_DQN = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
               target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
               exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))


def robotd_seed(seed: int, steps: int, arch: str, tmp: Path) -> tuple[float, float]:
    run = tmp / f"robotd-{arch}-{seed}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robotd.cli", "train", "--env", "CartPole-v1", "--arch", arch,
                    "--steps", str(steps), "--seed", str(seed), "--out", str(run),
                    "--no-progress"], check=True, capture_output=True, cwd=REPO)
    minutes = (time.perf_counter() - t0) / 60
    out = subprocess.run([sys.executable, "-m", "robotd.cli", "eval", str(run / "best.safetensors"), "--env",
                          "CartPole-v1", "--episodes", str(EVAL_EPISODES), "--seed", str(EVAL_SEED), "--json"],
                         check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])["mean_return"], minutes


def sb3_seed(seed: int, steps: int) -> tuple[float, float] | None:
    try:
        import torch
        from stable_baselines3 import DQN
    except ImportError:
        return None
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = DQN("MlpPolicy", "CartPole-v1", seed=seed, verbose=0, **ZOO_DQN)
    model.learn(steps)
    minutes = (time.perf_counter() - t0) / 60
    return sb3_mean_return(model, "CartPole-v1"), minutes


def sb3_mean_return(model, env_id: str, episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED) -> float:
    """An SB3 model's mean return over deterministic episodes ``seed .. seed + episodes - 1``."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arch", default="rwkv4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ret, minutes = robotd_seed(seed, args.steps, args.arch, Path(tmp))
            print(f"robotd train {args.arch} seed {seed}: mean greedy return {ret:6.1f} ({minutes:.1f} min)", flush=True)
    for seed in args.seeds:
        result = sb3_seed(seed, args.steps)
        if result is None:
            print("stable-baselines3 not installed: DQN skipped (pip install -e '.[bench]')")
            break
        print(f"SB3 DQN (zoo hyperparameters) seed {seed}: mean greedy return {result[0]:6.1f} ({result[1]:.1f} min)",
              flush=True)


if __name__ == "__main__":
    main()
