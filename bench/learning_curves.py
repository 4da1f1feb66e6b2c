"""Learning curves of training runs side by side, next to hold and pd on the same eval episodes.

Reads each run directory's ``metrics.csv`` (greedy eval success against wall-clock minutes) and
evaluates ``hold`` and ``pd`` on the episodes those evals use (seeds from the run's
``eval_seed``, ``eval_episodes`` of the largest run's config).

    python bench/learning_curves.py runs/a runs/b --labels "default" "eps-z" --out docs/img/learning_curves.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from calibration import load_calibration
from policies.evaluation import evaluate_policy
from robotd.daemon.policy_select import load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("learning_curves.png"))
    args = parser.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    configs = [tomllib.loads((r / "config.toml").read_text()) for r in args.runs]
    episodes = max(c.get("eval_episodes", 10) for c in configs)
    seed = configs[0].get("eval_seed", 1000)
    cal = load_calibration()
    baselines = {name: evaluate_policy(load_policy(name, cal), episodes, seed).success_rate for name in ("hold", "pd")}
    for name, rate in baselines.items():
        print(f"{name}: success {rate:.2f} on {episodes} episodes from seed {seed}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, label, cfg in zip(args.runs, labels, configs):
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        minutes = [float(r["minutes"]) for r in rows]
        success = [float(r["eval_success"]) for r in rows]
        ax.plot(minutes, success, "o-", ms=3, label=f"{label} ({cfg.get('eval_episodes', 10)} eval episodes)")
        best = max(range(len(rows)), key=lambda i: (success[i], float(rows[i]["eval_return"])))
        print(f"{label}: best eval success {success[best]:.2f} at {minutes[best]:.1f} min "
              f"({rows[best]['env_steps']} env steps); last {success[-1]:.2f} at {minutes[-1]:.1f} min")
    for (name, rate), style in zip(baselines.items(), ("--", ":")):
        ax.axhline(rate, color="gray", ls=style, label=f"{name} ({episodes} episodes)")
    ax.set_xlabel("wall-clock minutes (2 cores: 2 actor processes + the learner)")
    ax.set_ylabel("greedy eval success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("robotd train --sim: balance task, seeds from 1000")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
