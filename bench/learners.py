"""Our learner beside stable-baselines3 PPO and SAC on the balance task, at one wall-clock budget.

What it measures: the success rate on the fixed test episodes (seeds 1000-1099, the ones every
figure in docs/learning.md uses) of policies trained for the same ``--minutes`` of wall clock
on this machine, one run after the other, for several training seeds:

- ``robotd-rwkv4``, ``robotd-gru``, ``robotd-mlp``: ``robotd train --sim --arch A`` with
  ``--config`` (default: the shipped policy's, bench/balance_runs/b6.toml) plus
  ``eval_seed = 5000`` (the memory ablation: the same learner and budget with each network kind);
- ``sb3-ppo`` (2 envs in subprocesses) and ``sb3-sac`` (1 env): SB3's defaults, MLP policy, on
  ``robotd/BalanceTask-v0`` (Box actions) around the same stance and action scale;
- ``hold``, ``pd`` and ``balance`` (the shipped policy): evaluated only.

    python bench/learners.py --minutes 4 --seeds 0 1 2 --episodes 100 --out runs/learners
    python bench/learners.py --out runs/learners --table-only     # the table and PNG again

Each finished (row, seed) is one line of ``OUT/results.jsonl``, written at once; a rerun skips
the pairs already there, so an interrupted benchmark resumes. At the end: a markdown table
(success per seed, median, range, tilt, env steps, ratio to hold) and ``OUT/learners.png``.

How the comparison is kept fair:

- *Budget*: every trained row gets ``--minutes`` of wall clock, counted the same way: from the
  start of learning (robotd train's clock starts once its actors run; SB3's at its first
  callback) to the first budget check past it, validation evals included. Runs are sequential,
  so no two share the two cores; the env steps each got are in the table.
- *Environment*: the same MuJoCo balance task and observation (which carries the action
  history, so an MLP is not blind to the servo's state). SB3's Box actions span the same
  ``action_scale_rad`` as our learner's bins (0.12 rad in b5 and b6, not the env's default 0.4)
  around the same stance (the config's ``[stance_rad]``: action zero holds it for every row):
  the joint offsets each learner can command are the same.
- *Model selection*: the same rule for both. Our learner keeps ``best`` by a greedy eval every
  ``eval_every_steps`` (50k env steps: every ~30 s at the 1800 env steps/s docs/learning.md
  measured, slower when the machine is busy); SB3's callback evaluates its deterministic policy
  every ``VALIDATION_EVERY_S`` seconds; the table counts each run's evals. Both evaluate the
  untrained policy first (ours holds the stance; SB3's deterministic action starts near zero,
  i.e. near it too), so either may keep it. Both on the config's ``eval_episodes`` (30 in b6)
  validation episodes from seed 5000, disjoint from the test episodes, keeping the best
  (success, then return); neither evaluates at the end; the table says at which env step each
  ``best`` was saved (0: the untrained policy). The test
  reports both ``best`` (by validation) and ``last``; a run too short for one validation eval
  has no ``best``.
- *Test*: every policy through :func:`policies.evaluation.evaluate_policy` on the same episodes,
  ours through the daemon's torch-free runtime (``robotd.daemon.policy_select.load_policy``), SB3's
  through ``model.predict(deterministic=True)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from policies.evaluation import EVAL_SEED, EvalReport, evaluate_policy
from sim.observation import ObservationSpec

REPO = Path(__file__).resolve().parent.parent

#: The shipped policy's training config: our learner's settings for every robotd row, and the
#: action scale and stance of every trained row (``--config`` chooses another).
SHIPPED_CONFIG = REPO / "bench" / "balance_runs" / "b6.toml"
#: First seed of the validation episodes that pick ``best`` (the test episodes are EVAL_SEED..).
VALIDATION_SEED = 5000
#: SB3's validation interval: our learner's eval_every_steps (50k) at its ~1800 env steps/s
#: (docs/learning.md, Throughput) is one eval every ~28 s plus the eval itself.
VALIDATION_EVERY_S = 30.0

ROBOTD_ROWS = {"robotd-rwkv4": "rwkv4", "robotd-gru": "gru", "robotd-mlp": "mlp"}
SB3_ROWS = {"sb3-ppo": "ppo", "sb3-sac": "sac"}
BASELINE_ROWS = ("hold", "pd", "balance")
ROWS = (*ROBOTD_ROWS, *SB3_ROWS, *BASELINE_ROWS)
CHECKPOINTS = ("best", "last")


def config_values(path: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def sb3_obs_spec(values: dict[str, Any]) -> ObservationSpec:
    """The observation and action contract SB3 trains and is tested with: our learner's (scale, stance)."""
    from policies.qlearning import QLearningConfig

    return QLearningConfig.from_dict(values).robot_spec(ObservationSpec())


def task_env_kwargs(spec: ObservationSpec) -> dict[str, Any]:
    """The balance task's env arguments for a policy with this contract (as ``robotd eval`` builds them)."""
    from sim.env import balance_task_config

    return {"config": balance_task_config(obs_spec=spec)}


def run_episodes(policy: Any, episodes: int, seed: int) -> EvalReport:
    """Test and validation alike: ``policy`` greedy on ``episodes`` episodes from ``seed``."""
    return evaluate_policy(policy, episodes, seed, env_kwargs=task_env_kwargs(policy.spec))


def figures(report: EvalReport) -> dict[str, float]:
    return {"success": report.success_rate, "mean_tilt_deg": report.mean_tilt_deg, "mean_return": report.mean_return}


# ---------------------------------------------------------------------------------------------
# Our learner: robotd train in a subprocess, tested through the daemon's policy loader


def train_robotd(arch: str, seed: int, minutes: float, run_dir: Path, values: dict[str, Any]) -> dict[str, Any]:
    import tomli_w

    run_dir.mkdir(parents=True)
    config = run_dir / "bench_config.toml"
    config.write_text(tomli_w.dumps(values | {"eval_seed": VALIDATION_SEED}))
    with open(run_dir / "train.log", "w") as log:
        subprocess.run([sys.executable, "-m", "robotd.cli", "train", "--sim", "--minutes", f"{minutes:g}",
                        "--seed", str(seed), "--arch", arch, "--config", str(config), "--out", str(run_dir),
                        "--no-progress"], check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    done = re.search(r"after (\d+) env steps, \d+ updates, ([\d.]+) min", (run_dir / "train.log").read_text())
    if done is None:
        raise RuntimeError(f"{run_dir / 'train.log'}: no 'done after N env steps' line")
    with open(run_dir / "metrics.csv") as f:
        val_evals = sum(1 for _ in csv.DictReader(f))
    return {"env_steps": int(done.group(1)), "train_minutes": float(done.group(2)), "val_evals": val_evals}


def evaluate_robotd_checkpoints(run_dir: Path, episodes: int, names: list[str]) -> dict[str, dict[str, float] | None]:
    from calibration import load_calibration
    from robotd.daemon.policy_select import load_policy

    cal = load_calibration()
    out: dict[str, dict[str, float] | None] = {}
    for name in names:
        path = run_dir / f"{name}.safetensors"
        out[name] = figures(run_episodes(load_policy(str(path), cal), episodes, EVAL_SEED)) if path.exists() else None
    return out


# ---------------------------------------------------------------------------------------------
# stable-baselines3: trained in this process, budget and validation in a callback


class Sb3Policy:
    """An SB3 model behind the daemon's policy interface: its deterministic action."""

    def __init__(self, model: Any, spec: ObservationSpec, name: str):
        self.model, self.spec, self.name, self.identity = model, spec, name, name

    def reset(self) -> None:  # SB3's MLP policies keep no state between steps
        pass

    def act(self, obs: Any) -> Any:
        return self.model.predict(obs, deterministic=True)[0]


def make_task_env(env_kwargs: dict[str, Any]) -> Any:
    """The balance task with Box actions; runs in SB3's worker processes, so it registers the ids."""
    import gymnasium as gym

    import sim.envs  # noqa: F401
    from sim.balance_task import BALANCE_TASK_ENV_ID

    return gym.make(BALANCE_TASK_ENV_ID, **env_kwargs)


def sb3_callback(budget_s: float, every_s: float, episodes: int, spec: ObservationSpec, best_path: Path) -> Any:
    """A callback that stops learning when ``budget_s`` is spent and keeps the best validated model."""
    from stable_baselines3.common.callbacks import BaseCallback

    class BudgetAndValidation(BaseCallback):
        def _on_training_start(self) -> None:
            self.started = time.monotonic()
            self.next_eval_s = 0.0  # the untrained policy first, as robotd train does
            self.best = (-float("inf"), -float("inf"))
            self.evals = 0

        def _on_step(self) -> bool:
            elapsed = time.monotonic() - self.started
            if elapsed >= budget_s:
                return False
            if elapsed >= self.next_eval_s:
                self.next_eval_s += every_s
                self.evals += 1
                report = run_episodes(Sb3Policy(self.model, spec, "validation"), episodes, VALIDATION_SEED)
                score = (report.success_rate, report.mean_return)
                if score > self.best:
                    self.best = score
                    self.model.save(best_path)
            return True

    return BudgetAndValidation()


def train_sb3(algo: str, seed: int, minutes: float, run_dir: Path, values: dict[str, Any]) -> dict[str, Any]:
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    run_dir.mkdir(parents=True)
    # One thread, as robotd train's learner: on this 2-core machine two made PPO 8x and SAC 3x
    # slower (measured: torch's threads contend with the env workers and each other).
    torch.set_num_threads(1)
    spec = sb3_obs_spec(values)
    kwargs = task_env_kwargs(spec)
    if algo == "ppo":
        env = make_vec_env(make_task_env, n_envs=2, seed=seed, vec_env_cls=SubprocVecEnv,
                           env_kwargs={"env_kwargs": kwargs})
        model = PPO("MlpPolicy", env, seed=seed, verbose=0)
    else:
        env = make_vec_env(make_task_env, n_envs=1, seed=seed, env_kwargs={"env_kwargs": kwargs})
        model = SAC("MlpPolicy", env, seed=seed, verbose=0)
    callback = sb3_callback(minutes * 60.0, VALIDATION_EVERY_S, values["eval_episodes"], spec,
                            run_dir / "best.zip")
    try:
        model.learn(total_timesteps=10**12, callback=callback)  # the callback's budget ends it
    finally:
        env.close()
    model.save(run_dir / "last.zip")
    return {"env_steps": int(model.num_timesteps), "train_minutes": (time.monotonic() - callback.started) / 60,
            "val_evals": callback.evals}


def sb3_class(algo: str) -> Any:
    from stable_baselines3 import PPO, SAC

    return PPO if algo == "ppo" else SAC


def evaluate_sb3_checkpoints(algo: str, run_dir: Path, episodes: int, names: list[str],
                             values: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    cls = sb3_class(algo)
    spec = sb3_obs_spec(values)
    out: dict[str, dict[str, float] | None] = {}
    for name in names:
        path = run_dir / f"{name}.zip"
        policy = Sb3Policy(cls.load(path, device="cpu"), spec, f"sb3-{algo}-{name}") if path.exists() else None
        out[name] = figures(run_episodes(policy, episodes, EVAL_SEED)) if policy is not None else None
    return out


def best_env_steps(row: str, run_dir: Path) -> int | None:
    """The env step at which a run's ``best`` was saved (0: the untrained network); None without one.

    Read from the saved files, ours' metadata and SB3's zip alike.
    """
    if row in ROBOTD_ROWS:
        from policies.checkpoint import load_checkpoint

        path = run_dir / "best.safetensors"
        return int(load_checkpoint(path)[1].training["env_steps"]) if path.exists() else None
    path = run_dir / "best.zip"
    return int(sb3_class(SB3_ROWS[row]).load(path, device="cpu").num_timesteps) if path.exists() else None


# ---------------------------------------------------------------------------------------------
# One (row, seed), the results file, the run plan


def run_one(row: str, seed: int | None, minutes: float, episodes: int, out: Path, checkpoints: list[str],
            config: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    values = config_values(config)
    result: dict[str, Any] = {"row": row, "seed": seed, "episodes": episodes, "config": config_name(config)}
    if row in BASELINE_ROWS:
        from calibration import load_calibration
        from robotd.daemon.policy_select import load_policy

        policy = load_policy(row, load_calibration())
        result |= {"minutes": None, "env_steps": 0, "val_evals": 0,
                   "test": {"policy": figures(run_episodes(policy, episodes, EVAL_SEED))}}
    else:
        run_dir = out / row / f"seed{seed}"
        if run_dir.exists():  # an interrupted run of this pair: start it again
            shutil.rmtree(run_dir)
        if row in ROBOTD_ROWS:
            trained = train_robotd(ROBOTD_ROWS[row], seed, minutes, run_dir, values)
            tests = evaluate_robotd_checkpoints(run_dir, episodes, checkpoints)
        else:
            trained = train_sb3(SB3_ROWS[row], seed, minutes, run_dir, values)
            tests = evaluate_sb3_checkpoints(SB3_ROWS[row], run_dir, episodes, checkpoints, values)
        result |= {"minutes": minutes, **trained, "best_env_steps": best_env_steps(row, run_dir), "test": tests}
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def planned_runs(rows: list[str], seeds: list[int], done: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    """The (row, seed) pairs still to run: baselines once (seed None), trained rows per seed."""
    have = {(r["row"], r["seed"]) for r in done}
    plan = [(row, None) if row in BASELINE_ROWS else (row, seed)
            for row in rows for seed in (seeds if row not in BASELINE_ROWS else [None])]
    return [pair for pair in dict.fromkeys(plan) if pair not in have]


#: The config of a results line written before lines recorded theirs.
UNRECORDED_CONFIG = "bench/balance_runs/b5.toml"


def line_config(result: dict[str, Any]) -> str:
    return result.get("config", UNRECORDED_CONFIG)


def config_name(config: Path) -> str:
    """How a results line names its config: relative to the repo where it is inside it."""
    config = config.resolve()
    return str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config)


def check_same_experiment(done: list[dict[str, Any]], minutes: float, episodes: int, config: Path,
                          path: Path) -> None:
    """A results file holds one experiment: a different budget, episode count or config is an error.

    Lines written before the config was recorded were b5's.
    """
    name = config_name(config)
    for r in done:
        had = line_config(r)
        if r["episodes"] != episodes or (r["minutes"] is not None and r["minutes"] != minutes) or had != name:
            raise SystemExit(f"{path}: holds {r['row']} seed {r['seed']} at --minutes {r['minutes']} --episodes "
                             f"{r['episodes']} --config {had}, not {minutes} / {episodes} / {name}: "
                             f"choose another --out")


# ---------------------------------------------------------------------------------------------
# The table and the figure


def row_series(results: list[dict[str, Any]]) -> list[tuple[str, str, dict[int | None, dict[str, Any]]]]:
    """(row, checkpoint, {seed: result}) in ROWS order; trained rows give best then last (those tested)."""
    series = []
    for row in ROWS:
        by_seed = {r["seed"]: r for r in results if r["row"] == row}
        if by_seed:
            for ckpt in ("policy",) if row in BASELINE_ROWS else CHECKPOINTS:
                if any(ckpt in r["test"] for r in by_seed.values()):
                    series.append((row, ckpt, by_seed))
    return series


def hold_success(results: list[dict[str, Any]]) -> float | None:
    return next((r["test"]["policy"]["success"] for r in results if r["row"] == "hold"), None)


def markdown_table(results: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in results if r["seed"] is not None})
    hold = hold_success(results)
    head = ["row", "checkpoint", *(f"seed {s}" for s in seeds), "median", "min–max", "mean tilt (median)",
            "env steps (median)", "median / hold", "validation evals (median)", "best saved at step (per seed)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, ckpt, by_seed in row_series(results):
        tests = {s: r["test"][ckpt] for s, r in by_seed.items() if ckpt in r["test"]}
        rates = [t["success"] for t in tests.values() if t is not None]
        # Per seed: its success, "—" where the run had no validation eval (no best), blank if not run.
        cells = ["—"] * len(seeds) if row in BASELINE_ROWS else [
            f"{tests[s]['success']:.2f}" if tests.get(s) else ("—" if s in tests else "") for s in seeds]
        median = statistics.median(rates) if rates else None
        tilt = statistics.median(t["mean_tilt_deg"] for t in tests.values() if t is not None) if rates else None
        steps = statistics.median(r["env_steps"] for r in by_seed.values())
        cols = [row, ckpt if ckpt != "policy" else "—", *cells,
                f"**{median:.2f}**" if rates else "—", f"{min(rates):.2f}–{max(rates):.2f}" if rates else "—",
                f"{tilt:.1f}°" if rates else "—", f"{steps:,.0f}" if steps else "—",
                f"{median / hold:.2f}" if rates and hold else "—",
                "—" if row in BASELINE_ROWS else f"{statistics.median(r['val_evals'] for r in by_seed.values()):g}",
                "—" if row in BASELINE_ROWS or ckpt != "best" else ", ".join(
                    f"{by_seed[s]['best_env_steps']:,}" if by_seed.get(s, {}).get("best_env_steps") is not None
                    else "—" for s in seeds)]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = row_series(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(series)), 4))
    colors = {"best": "tab:blue", "last": "tab:orange", "policy": "tab:gray"}
    labels = {"best": "best by validation", "last": "last", "policy": "not trained"}
    for x, (row, ckpt, by_seed) in enumerate(series):
        rates = [r["test"][ckpt]["success"] for r in by_seed.values() if r["test"][ckpt] is not None]
        if not rates:
            continue
        ax.bar(x, statistics.median(rates), color=colors[ckpt], alpha=0.6,
               label=labels[ckpt] if labels[ckpt] not in ax.get_legend_handles_labels()[1] else None)
        ax.plot([x] * len(rates), rates, "k.", markersize=8)
    hold = hold_success(results)
    if hold is not None:
        ax.axhline(hold, color="tab:gray", linestyle="--", linewidth=1, label="hold")
    ax.set_xticks(range(len(series)), [f"{row}\n{ckpt}" if ckpt != "policy" else row for row, ckpt, _ in series],
                  fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("test success (median bar, seeds as dots)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: list[dict[str, Any]], out: Path) -> None:
    minutes = next((r["minutes"] for r in results if r["minutes"] is not None), None)
    episodes = results[0]["episodes"] if results else 0
    config = line_config(results[0]) if results else ""
    title = (f"balance task: {minutes} min per training seed, {episodes} test episodes from seed {EVAL_SEED}, "
             f"{Path(config).stem}'s stance and action scale")
    print(f"\n{title}\n\n{markdown_table(results)}\n")
    plot(results, out / "learners.png", title)
    print(f"figure: {out / 'learners.png'}; results: {out / 'results.jsonl'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget per (row, seed)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100, help=f"test episodes from seed {EVAL_SEED}")
    parser.add_argument("--out", type=Path, default=Path("runs/learners"))
    parser.add_argument("--config", type=Path, default=SHIPPED_CONFIG,
                        help="robotd train's config for the robotd rows; its action scale and stance for every trained row")
    parser.add_argument("--checkpoints", nargs="+", choices=CHECKPOINTS, default=list(CHECKPOINTS),
                        help="which checkpoints of a trained run to test (each costs --episodes episodes)")
    parser.add_argument("--table-only", action="store_true", help="print the table and draw the PNG from results.jsonl")
    args = parser.parse_args()
    results_path = args.out / "results.jsonl"
    done = read_results(results_path)
    if args.table_only:
        if not done:
            raise SystemExit(f"{results_path}: no results")
        report(done, args.out)
        return
    check_same_experiment(done, args.minutes, args.episodes, args.config, results_path)
    if any(row in SB3_ROWS for row in args.rows):
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            raise SystemExit("stable-baselines3 is not installed: pip install -e '.[bench]'") from None
    plan = planned_runs(args.rows, args.seeds, done)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(plan)} runs to do ({len(done)} already in {results_path})", flush=True)
    for i, (row, seed) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {row}" + (f" seed {seed}: {args.minutes:g} min training + tests" if seed is not None
                                             else ": test only"), flush=True)
        result = run_one(row, seed, args.minutes, args.episodes, args.out, args.checkpoints, args.config)
        with open(results_path, "a") as f:
            f.write(json.dumps(result) + "\n")
        done.append(result)
        tests = ", ".join(f"{k} {v['success']:.2f}" if v else f"{k} —" for k, v in result["test"].items())
        print(f"    {tests}; {result['env_steps']} env steps, {result['val_evals']} validation evals, "
              f"{result['wall_s']:.0f} s", flush=True)
    report(done, args.out)


if __name__ == "__main__":
    main()
