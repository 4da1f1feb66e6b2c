"""The learner's positive control: can `robotd train` beat tuned feedback where feedback can win?

On the simulated robot with no servo dead time and no phone latency, every push 7.5 N
(``robotd eval --sim --task undelayed-push``), Bayesian-optimised PD gains reach 0.46 where hold
reaches 0.21 (docs/learning.md). A learner that does not get there has a defect of its own,
whatever the real robot's delays allow. For each training seed this runs, as a user would::

    robotd train --env robotd/UndelayedPushDiscrete-v0 --minutes M --seed S --out OUT/seed-S
    robotd eval OUT/seed-S/best.safetensors --sim --task undelayed-push --episodes 100 --json

(the best checkpoint is chosen by the periodic evals on episodes from seed 2000; the test
episodes are 1000-1099), then hold and the BO-tuned PD on the same 100 episodes, and prints
one table. Runs already in OUT are evaluated, not retrained.

    python bench/positive_control.py [--minutes 12] [--seeds 0 1 2] [--out runs/control] [--arch rwkv4]
        [--config bench/balance_runs/control.toml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV_ID = "robotd/UndelayedPushDiscrete-v0"
#: The best PD gains BO found on this condition (bench/authority.py, docs/learning.md): 0.46 there.
TUNED_PD = "pd:kp_hip=0.0,kp_ankle=0.0,kd_hip=0.10,kd_ankle=0.10"
TARGET = 0.46


def _robotd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robotd.cli", *args], check=True, capture_output=True, text=True,
                          cwd=REPO)


def evaluate(policy: str, episodes: int, seed: int) -> dict:
    out = _robotd("eval", policy, "--sim", "--task", "undelayed-push", "--episodes", str(episodes),
                  "--seed", str(seed), "--json")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=12.0, help="training budget per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arch", default="rwkv4")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("runs/control"))
    p.add_argument("--config", type=Path, default=None, help="robotd train --config for every seed")
    args = p.parse_args()
    rows: list[tuple[str, dict]] = []
    for seed in args.seeds:
        run = args.out / f"{args.arch}-seed-{seed}"
        if not (run / "best.safetensors").exists():
            print(f"training {args.arch} seed {seed} for {args.minutes:g} min -> {run}", flush=True)
            _robotd("train", "--env", ENV_ID, "--arch", args.arch, "--minutes", str(args.minutes), "--seed", str(seed),
                    "--out", str(run), "--no-progress", *(["--config", str(args.config)] if args.config else []))
        rows.append((f"robotd train {args.arch} seed {seed}", evaluate(str(run / "best.safetensors"), args.episodes,
                                                                       args.eval_seed)))
        print(f"{rows[-1][0]}: success {rows[-1][1]['success_rate']:.2f}", flush=True)
    learned = [r["success_rate"] for _, r in rows]
    for name, policy in (("hold", "hold"), ("BO-tuned PD", TUNED_PD)):
        rows.append((name, evaluate(policy, args.episodes, args.eval_seed)))
    print(f"\n| policy | success ({args.episodes} episodes from seed {args.eval_seed}) | mean tilt (deg) |")
    print("|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['success_rate']:.2f} | {r['mean_tilt_deg']:.1f} |")
    median = statistics.median(learned)
    print(f"\nrobotd train median over seeds {median:.2f} (range {min(learned):.2f}-{max(learned):.2f}); "
          f"target >= {TARGET}: {'reached' if median >= TARGET else 'not reached'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
