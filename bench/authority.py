"""What the robot's authority allows: the best feedback controller Bayesian optimisation finds,
with the robot's delays and without them.

The learned policy has to beat ``hold`` with ~0.1-0.25 s between a decision and the servo
moving (80-250 ms servo dead time + 10-60 ms phone latency) under a slew limit. This asks the
question the policy cannot answer by itself: is the 90 % target reachable through this
actuation at all, and is the delay what stands in the way? For each condition it

1. evaluates ``hold`` on the test episodes (seeds from ``EVAL_SEED``);
2. tunes the PD policy's four gains (:data:`policies.tuning.PD_GAINS_SPACE`: hip and ankle
   offset per rad of torso tilt and per rad/s) with the GP sampler, ``--trials`` trials of
   ``--episodes`` episodes from ``TUNING_EVAL_SEED`` (never the test episodes), the shipped
   gains enqueued first (``--tuning-seed`` moves them);
3. evaluates the best gains on the same test episodes as ``hold``.

Conditions: the task as built, and the same robot with no servo dead time and no phone
latency (everything else, the slew limit, noise, pushes and string, unchanged); each on the
balance task's pushes (three of U(0, 8) N) and with every push at ``--push-n`` N
(``--conditions`` picks some of ``task``, ``task-undelayed``, ``push``, ``push-undelayed``).

``--config TOML`` (a training config: bench/balance_runs/b6.toml) puts hold and PD on that
config's contract: its stance is what hold holds and what PD acts around, at its action scale.
``--deadband`` adds PdGains' deadband to the search: a PD that leaves tilts below it to the
stance and pushes back only against a larger lean (a robot resting on its string, say).

    python bench/authority.py [--trials 30] [--episodes 10] [--test-episodes 100] [--push-n 7.5] \\
        [--config bench/balance_runs/b6.toml] [--deadband] [--conditions task push] [--json out.json]

Prints one line per condition; docs/learning.md has the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from calibration import load_calibration
from policies.baselines import HoldPolicy, PdPolicy
from policies.evaluation import EVAL_SEED, EvalReport, evaluate_policy
from policies.qlearning import QLearningConfig
from policies.tuning import (PD_GAINS_SPACE, TUNING_EVAL_SEED, Knob, eval_score, known_good_pd_params, make_sampler,
                             pd_gains, suggest_params)
from sim.balance_task import BALANCE_TASK_ENV_ID
from sim.env import EnvConfig, balance_task_config, undelayed_push_config
from sim.observation import ObservationSpec

CONDITIONS = ("task", "task-undelayed", "push", "push-undelayed")
#: The deadband's range: up to 20 degrees (the task's worst tilts under hold are 25-31 degrees).
DEADBAND = Knob(0.0, 0.35, why="torso tilt (rad) the P term ignores")


def conditions(push_n: float, spec: ObservationSpec) -> dict[str, tuple[str, EnvConfig]]:
    """key -> (label, env config) for each of CONDITIONS, the policies acting through ``spec``."""
    base = balance_task_config(obs_spec=spec)
    undelayed_push = undelayed_push_config(push_n, obs_spec=spec)
    return {
        "task": ("as built, task pushes", base),
        "task-undelayed": ("no delays, task pushes", replace(undelayed_push, pushes=base.pushes)),
        "push": (f"as built, {push_n:g} N pushes", replace(base, pushes=undelayed_push.pushes)),
        "push-undelayed": (f"no delays, {push_n:g} N pushes", undelayed_push),
    }


def pd_report(params: dict, spec: ObservationSpec, episodes: int, seed: int, env_kwargs: dict) -> EvalReport:
    """The PD policy with these gains on ``episodes`` episodes of the condition."""
    return evaluate_policy(PdPolicy(spec, pd_gains(params)), episodes, seed, BALANCE_TASK_ENV_ID, env_kwargs)


def tune_pd(space: dict[str, Knob], spec: ObservationSpec, env_kwargs: dict, trials: int, episodes: int,
            tuning_seed: int, seed: int) -> tuple[dict, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler("gp", seed, 5))
    study.enqueue_trial(known_good_pd_params(space))
    for _ in range(trials):
        trial = study.ask()
        report = pd_report(suggest_params(trial, space), spec, episodes, tuning_seed, env_kwargs)
        study.tell(trial, eval_score(report.success_rate, report.mean_return))
    return study.best_trial.params, study.best_value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--episodes", type=int, default=10, help="tuning episodes per trial")
    p.add_argument("--test-episodes", type=int, default=100)
    p.add_argument("--push-n", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--tuning-seed", type=int, default=TUNING_EVAL_SEED,
                   help="first seed of the tuning episodes (b6's stance was itself tuned on 2000..: use 3000 for it)")
    p.add_argument("--config", type=Path, help="a training config (TOML): hold and PD act through its contract "
                   "(stance, action scale) instead of the nominal pose at the env's scale")
    p.add_argument("--deadband", action="store_true", help="tune PdGains.deadband_rad too")
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cal = load_calibration()
    spec = ObservationSpec()
    if args.config:
        spec = QLearningConfig.from_dict(tomllib.loads(args.config.read_text()), str(args.config)).robot_spec(spec)
    space = PD_GAINS_SPACE | ({"deadband_rad": DEADBAND} if args.deadband else {})
    hold = HoldPolicy(spec)
    rows = []
    table = conditions(args.push_n, spec)
    for key in args.conditions:
        name, config = table[key]
        t0 = time.perf_counter()
        env_kwargs = {"config": config, "calibration": cal}
        hold_report = evaluate_policy(hold, args.test_episodes, EVAL_SEED, BALANCE_TASK_ENV_ID, env_kwargs)
        params, tuned_score = tune_pd(space, spec, env_kwargs, args.trials, args.episodes, args.tuning_seed, args.seed)
        tuned = pd_report(params, spec, args.test_episodes, EVAL_SEED, env_kwargs)
        row = {"condition": name, "hold": hold_report.success_rate, "hold_tilt_deg": hold_report.mean_tilt_deg,
               "tuned_pd": tuned.success_rate, "tuned_pd_tilt_deg": tuned.mean_tilt_deg,
               "tuning_score": tuned_score, "gains": params, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{name:<28} hold {row['hold']:.2f} ({row['hold_tilt_deg']:.1f} deg)  tuned PD {row['tuned_pd']:.2f} "
              f"({row['tuned_pd_tilt_deg']:.1f} deg; tuning {tuned_score:.2f}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in params.items()) + f")  {row['seconds']:.0f} s", flush=True)
    if args.json:
        arguments = vars(args) | {"json": str(args.json), "config": str(args.config) if args.config else None}
        args.json.write_text(json.dumps({"args": arguments, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
