"""``robotd stance``: find the stance a balance policy is trained around (Bayesian optimisation in the simulator).

    robotd stance --trials 50 --episodes 30 --tilt-per-deg 0.005 --out stance.toml   # ~6 min: the shipped one's search
    robotd train --sim --config stance.toml --minutes 30 --out runs/balance          # the policy around it

Each trial holds one constant leg posture (crouch, lean, spread: policies/stance.py) through the
balance task's tuning episodes (from seed 2000), GP sampler, hold first; the best posture and
hold are then scored on the test episodes (from 1000). The robot is the calibration robotd run
reads (--calibration): its joint limits bound the stance, its dead time centres the delays, as
robotd train does. --out writes the robot's shipped training recipe (policies/env_defaults.toml)
with the found stance in place of the shipped one, for robotd train --sim --config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from robotd.cli import doc_parser, existing_output
from robotd.commands.train import _positive_int


def _parser() -> argparse.ArgumentParser:
    p = doc_parser("robotd stance", __doc__)
    p.add_argument("--trials", type=_positive_int, default=40, help="postures to try (default 40)")
    p.add_argument("--episodes", type=_positive_int, default=10, help="tuning episodes per trial (default 10)")
    p.add_argument("--test-episodes", type=_positive_int, default=100,
                   help="test episodes for the best posture and hold (default 100)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    p.add_argument("--tilt-per-deg", type=float, default=0.0,
                   help="score = success - this * mean tilt (deg): prefer the more upright of equal stances")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="the robot's calibration TOML (default: robotd run's lookup, "
                        "$XDG_CONFIG_HOME/robotd/robot.toml, else the packaged template)")
    p.add_argument("--out", type=Path, metavar="FILE.toml",
                   help="write the training recipe around the stance, for robotd train --sim --config")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the search's result as JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --out / --json file")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from calibration import CalibrationError, load_calibration

    refused = [r for r in (existing_output(args.out, "--out", args.force),
                           existing_output(args.json, "--json", args.force)) if r]
    try:
        if refused:  # before the minutes of searching, not after
            raise ValueError(refused[0])
        cal = load_calibration(args.calibration)
    except (CalibrationError, ValueError) as exc:
        print(f"robotd stance: {exc}", file=sys.stderr)
        return 2
    from policies.evaluation import EVAL_SEED
    from policies.qlearning import QLearningConfig
    from policies.stance import posture_report, search_stance, stance_table
    from sim.balance_task import BALANCE_TASK_DISCRETE_ENV_ID
    from sim.observation import ObservationSpec

    print(f"robotd stance: {args.trials} trials of {args.episodes} episodes on calibration {cal.path} "
          f"({cal.identity})", flush=True)
    t0 = time.perf_counter()
    found = search_stance(args.trials, args.episodes, cal, args.seed, args.tilt_per_deg,
                          log=lambda line: print(line, flush=True))
    hold = {name: 0.0 for name in found.params}
    test, held = (posture_report(p, args.test_episodes, EVAL_SEED, cal) for p in (found.params, hold))
    print(f"best posture on the test episodes: {test.success_rate:.2f} ({test.mean_tilt_deg:.1f} deg), hold "
          f"{held.success_rate:.2f} ({held.mean_tilt_deg:.1f} deg); tuning score {found.tuning_score:.2f}; "
          + ", ".join(f"{n} {v:+.2f}" for n, v in found.params.items()) + f"  {time.perf_counter() - t0:.0f} s")
    recipe = QLearningConfig.env_defaults(BALANCE_TASK_DISCRETE_ENV_ID)
    stance = stance_table(ObservationSpec(), found.params, recipe["action_scale_rad"], cal)
    if args.out is not None:
        import tomli_w

        args.out.write_text(tomli_w.dumps(recipe | {"stance_rad": stance}))
        print(f"wrote {args.out}: robotd train --sim --config {args.out}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                         "calibration": cal.identity, "params": found.params, "stance_rad": stance,
                                         "test_success": test.success_rate, "test_tilt_deg": test.mean_tilt_deg,
                                         "hold_success": held.success_rate, "hold_tilt_deg": held.mean_tilt_deg,
                                         "tuning_score": found.tuning_score}, indent=1))
    return 0
