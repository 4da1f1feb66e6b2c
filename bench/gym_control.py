"""A multi-joint positive control: robotd train on a gymnasium MuJoCo env beside SB3 SAC and PPO.

CartPole has one action dimension and rewards of 1; the robot has ten joints and a reward that
hardly depends on the action. A learner that is right should also learn a multi-joint Box task
that the peers learn: ``Hopper-v5`` (3 joints, 5 bins each for robotd train, DecQN's joint value
over them), every learner given the same ``--minutes`` of wall clock on this machine, one run
after the other, for each seed:

- ``robotd``: ``robotd train --env Hopper-v5 --minutes M --seed S`` with the shipped per-env
  defaults (policies/env_defaults.toml), tested as ``robotd eval OUT/best.safetensors --env
  Hopper-v5`` (``best`` by its periodic evals from seed 2000) and its ``last``;
- ``sb3-sac`` (1 env) and ``sb3-ppo`` (2 envs in subprocesses): SB3's defaults, MLP policy, one
  torch thread, the final model (as rl-baselines3-zoo reports).

The score is the mean return of the same 10 deterministic episodes (seeds 1000-1009) for every
model. Each finished (learner, seed) is one line of ``OUT/results.jsonl``; a rerun skips those
already there. At the end: a markdown table and ``OUT/gym_control.png``.

    python bench/gym_control.py [--env Hopper-v5] [--minutes 4] [--seeds 0 1 2] [--out runs/gym_control]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cartpole import EVAL_EPISODES, EVAL_SEED, sb3_mean_return

REPO = Path(__file__).resolve().parent.parent
LEARNERS = ("robotd", "sb3-sac", "sb3-ppo")
TARGET_RATIO = 0.8  # robotd train within 20 % of the better peer


def train_robotd(env_id: str, seed: int, minutes: float, run_dir: Path) -> dict[str, Any]:
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run([sys.executable, "-m", "robotd.cli", "train", "--env", env_id, "--minutes", f"{minutes:g}",
                        "--seed", str(seed), "--out", str(run_dir), "--no-progress"], check=True, stdout=log,
                       stderr=subprocess.STDOUT, cwd=REPO)
    out = {}
    for name in ("best", "last"):
        result = subprocess.run([sys.executable, "-m", "robotd.cli", "eval", str(run_dir / f"{name}.safetensors"),
                                 "--env", env_id, "--episodes", str(EVAL_EPISODES), "--seed", str(EVAL_SEED),
                                 "--json"], check=True, capture_output=True, text=True, cwd=REPO)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])["mean_return"]
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    return {"return": out["best"], "return_last": out["last"], "env_steps": int(rows[-1].split(",")[0])}


def sb3_budget(budget_s: float) -> Any:
    """Stops learning when ``budget_s`` of wall clock has passed since learning started."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Budget(BaseCallback):
        def _on_training_start(self) -> None:
            self.started = time.monotonic()

        def _on_step(self) -> bool:
            return time.monotonic() - self.started < budget_s

    return Budget()


def train_sb3(algo: str, env_id: str, seed: int, minutes: float) -> dict[str, Any]:
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    torch.set_num_threads(1)  # as robotd train's learner (bench/learners.py: two threads are slower here)
    if algo == "ppo":
        env = make_vec_env(env_id, n_envs=2, seed=seed, vec_env_cls=SubprocVecEnv)
        model = PPO("MlpPolicy", env, seed=seed, verbose=0)
    else:
        env = make_vec_env(env_id, n_envs=1, seed=seed)
        model = SAC("MlpPolicy", env, seed=seed, verbose=0)
    try:
        model.learn(total_timesteps=10**12, callback=sb3_budget(minutes * 60.0))
    finally:
        env.close()
    return {"return": sb3_mean_return(model, env_id, EVAL_EPISODES, EVAL_SEED), "env_steps": int(model.num_timesteps)}


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def markdown_table(results: list[dict[str, Any]], seeds: list[int]) -> str:
    lines = ["| learner | " + " | ".join(f"seed {s}" for s in seeds) + " | median | env steps (median) |",
             "|---|" + "---|" * (len(seeds) + 2)]
    medians = {}
    for learner in LEARNERS:
        by_seed = {r["seed"]: r for r in results if r["learner"] == learner}
        if not by_seed:
            continue
        cells = []
        for s in seeds:
            r = by_seed.get(s)
            cells.append("-" if r is None else f"{r['return']:.0f}" +
                         (f" (last {r['return_last']:.0f})" if "return_last" in r else ""))
        medians[learner] = statistics.median(r["return"] for r in by_seed.values())
        steps = statistics.median(r["env_steps"] for r in by_seed.values())
        lines.append(f"| {learner} | " + " | ".join(cells) + f" | {medians[learner]:.0f} | {steps:.0f} |")
    peers = [medians[k] for k in ("sb3-sac", "sb3-ppo") if k in medians]
    if "robotd" in medians and peers:
        ratio = medians["robotd"] / max(peers)
        lines.append(f"\nrobotd / best peer (medians) = {ratio:.2f}; target >= {TARGET_RATIO}: "
                     f"{'reached' if ratio >= TARGET_RATIO else 'not reached'}")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, learner in enumerate(LEARNERS):
        returns = [r["return"] for r in results if r["learner"] == learner]
        if returns:
            ax.scatter([i] * len(returns), returns, label=learner)
            ax.hlines(statistics.median(returns), i - 0.25, i + 0.25, colors="k")
    ax.set_xticks(range(len(LEARNERS)), LEARNERS)
    ax.set_ylabel(f"mean return, {EVAL_EPISODES} test episodes")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    p.add_argument("--out", type=Path, default=Path("runs/gym_control"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = {(r["learner"], r["seed"]) for r in read_results(results_path)}
    for seed in args.seeds:
        for learner in args.learners:
            if (learner, seed) in done:
                continue
            print(f"{learner} seed {seed}: {args.minutes:g} min on {args.env}", flush=True)
            if learner == "robotd":
                result = train_robotd(args.env, seed, args.minutes, args.out / f"robotd-seed-{seed}")
            else:
                result = train_sb3(learner.removeprefix("sb3-"), args.env, seed, args.minutes)
            line = {"learner": learner, "seed": seed, "env": args.env, "minutes": args.minutes, **result}
            with open(results_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"  return {result['return']:.0f} after {result['env_steps']} env steps", flush=True)
    results = [r for r in read_results(results_path) if r["env"] == args.env and r["seed"] in args.seeds]
    print(markdown_table(results, args.seeds))
    plot(results, args.out / "gym_control.png", f"{args.env}, {args.minutes:g} min of wall clock per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
