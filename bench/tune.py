"""GP-based Bayesian optimisation against random search, on PD gains in the simulator.

The deployment problem ``robotd tune --port`` solves on the robot, made cheap: a trial is
the PD policy with a setting of :data:`policies.tuning.PD_GAINS_SPACE`, scored by
:func:`policies.tuning.eval_score` (success rate, return as a tie break) over ``--episodes``
seeded episodes of the balance task from ``TUNING_EVAL_SEED`` (:func:`evaluate_policy`, the one
definition of success). Each sampler gets the same trial count on each seed; the figure is the
best score found so far against the trial number (mean over seeds, min-max band). The best
setting of each run is then evaluated on ``--report-episodes`` episodes from ``EVAL_SEED``,
which tuning never saw.

    python bench/tune.py [--trials 20] [--seeds 5] [--episodes 8] [--startup-trials 5] \\
        [--png docs/img/tune_bo_vs_random.png] [--json out/tune_bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from policies.baselines import PdPolicy
from policies.evaluation import EVAL_SEED, evaluate_policy
from policies.tuning import PD_GAINS_SPACE, TUNING_EVAL_SEED, eval_score, make_sampler, pd_gains, suggest_params
from sim.observation import ObservationSpec

REPO = Path(__file__).resolve().parent.parent


def score_gains(params: dict, episodes: int, seed: int) -> tuple[float, float]:
    """(eval_score, success rate) of the PD policy with these gains."""
    report = evaluate_policy(PdPolicy(ObservationSpec(), pd_gains(params)), episodes, seed)
    return eval_score(report.success_rate, report.mean_return), report.success_rate


def run_one(sampler_name: str, seed: int, args: argparse.Namespace) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler_name, seed, args.startup_trials))
    scores = []
    t0 = time.perf_counter()
    for _ in range(args.trials):
        trial = study.ask()
        value, _ = score_gains(suggest_params(trial, PD_GAINS_SPACE), args.episodes, TUNING_EVAL_SEED)
        study.tell(trial, value)
        scores.append(value)
    best = study.best_trial
    report_score, report_success = score_gains(best.params, args.report_episodes, EVAL_SEED)
    return {"sampler": sampler_name, "seed": seed, "scores": scores,
            "best_so_far": np.maximum.accumulate(scores).tolist(), "best_params": best.params,
            "best_tuning_score": best.value, "report_score": report_score, "report_success": report_success,
            "seconds": time.perf_counter() - t0}


def plot(runs: list[dict], samplers: list[str], png: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(1, args.trials + 1)
    for name in samplers:
        curves = np.array([r["best_so_far"] for r in runs if r["sampler"] == name])
        line, = ax.plot(x, curves.mean(0), "o-", ms=3, label=f"{name} (mean of {len(curves)} seeds)")
        ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best score so far (success rate, {args.episodes} episodes)")
    ax.set_title("PD gains on the simulated balance task: GP-BO vs random search")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=8, help="episodes per trial")
    p.add_argument("--report-episodes", type=int, default=20, help="episodes for each run's best setting")
    p.add_argument("--startup-trials", type=int, default=5, help="GP's random trials before the model")
    p.add_argument("--samplers", default="gp,random")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "tune_bo_vs_random.png")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    samplers = args.samplers.split(",")
    runs = []
    for seed in range(args.seeds):
        for name in samplers:
            run = run_one(name, seed, args)
            runs.append(run)
            print(f"{name:6s} seed {seed}: best {run['best_tuning_score']:.3f} at trial "
                  f"{int(np.argmax(run['scores']))}, on the reporting episodes {run['report_success']:.2f} "
                  f"({run['seconds']:.0f} s)", flush=True)
    print(f"\n{args.trials} trials x {args.episodes} episodes, {args.seeds} seeds; best score found (mean +- std), "
          f"and the best setting's success on {args.report_episodes} reporting episodes:")
    for name in samplers:
        mine = [r for r in runs if r["sampler"] == name]
        final = np.array([r["best_so_far"][-1] for r in mine])
        half = np.array([r["best_so_far"][args.trials // 2 - 1] for r in mine]) if args.trials >= 2 else final
        report = np.array([r["report_success"] for r in mine])
        print(f"  {name:6s} after {args.trials // 2} trials {half.mean():.3f} +- {half.std():.3f}; after "
              f"{args.trials}: {final.mean():.3f} +- {final.std():.3f}; reporting {report.mean():.3f} +- "
              f"{report.std():.3f}")
    plot(runs, samplers, args.png, args)
    print(f"figure: {args.png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
