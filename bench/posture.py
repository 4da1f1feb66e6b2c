"""How much of the balance task a better stance alone wins: Bayesian optimisation over one
constant leg posture, tested on the episodes every policy is scored on.

bench/push_limits.py finds that holding still loses the pushes whose capture point leaves the
soles, and that one well-chosen centre-of-mass placement would keep up to 0.89 of the test
episodes (chosen knowing their pushes, so a ceiling). The stance is set while the robot is
lowered onto its feet: legs spread before touchdown land wider, a crouch lowers the centre of
mass, a lean moves it over the soles. This tunes five posture knobs (action units: 1 is the
action scale, 0.4 rad; see :func:`posture_action`) with the GP sampler on ``--episodes``
tuning episodes from ``TUNING_EVAL_SEED`` (never the test episodes), ``hold`` (all zeros)
enqueued first, then tests the best on the test episodes beside ``hold``.

    python bench/posture.py [--trials 40] [--episodes 10] [--test-episodes 100] [--json out.json] \\
        [--toml stance.toml]

``--toml`` writes the best posture as a ``[stance_rad]`` table (joint -> rad) that ``robotd train
--config`` takes: the policy is then trained around that stance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from calibration import load_calibration
from policies.evaluation import EVAL_SEED, EvalReport, evaluate_policy
from policies.tuning import TUNING_EVAL_SEED, Knob, eval_score, make_sampler, suggest_params
from robotd.daemon.policy_select import MAX_CLAMPED_FRACTION, load_policy
from sim.balance_task import BALANCE_TASK_ENV_ID
from sim.observation import ObservationSpec

# The ranges keep the stance's joints about 0.12 rad (b5's action scale) inside the calibrated
# limits (ankle roll's +-0.392 rad bounds the spread, the ankle pitch's -0.942 the crouch), and
# stance_table moves a joint the last bit inward, so a policy trained around the stance keeps
# its action range.
POSTURE_SPACE: dict[str, Knob] = {
    "crouch": Knob(0.0, 2.0, why="knees bend by it, hips and ankles pitch back by half (the env's crouch)"),
    "ankle_pitch": Knob(-0.3, 0.3, why="both ankles: the whole body leans forward/back over the soles"),
    "hip_pitch": Knob(-0.3, 0.3, why="both hips: the trunk leans forward/back"),
    "spread": Knob(-0.2, 0.7, why="hip roll outward (ankle roll back, soles flat): a wider stance at touchdown"),
    "ankle_roll": Knob(-0.05, 0.05, why="both ankle rolls the same way: the body leans sideways"),
}


def posture_action(spec: ObservationSpec, params: dict[str, float]) -> np.ndarray:
    """The constant action of a posture (joint axes: both roll joints turn about +x, so the right
    hip's positive roll swings its foot inward, the left's outward)."""
    action = np.zeros(spec.n_actions)
    index = {j: i for i, j in enumerate(spec.controlled_joints)}
    for side in ("r", "l"):
        outward = -1.0 if side == "r" else 1.0
        action[index[f"{side}_knee"]] += params["crouch"]
        action[index[f"{side}_hip_pitch"]] += -0.5 * params["crouch"] + params["hip_pitch"]
        action[index[f"{side}_ankle_pitch"]] += -0.5 * params["crouch"] + params["ankle_pitch"]
        action[index[f"{side}_hip_roll"]] += outward * params["spread"]
        action[index[f"{side}_ankle_roll"]] += -outward * params["spread"] + params["ankle_roll"]
    return np.clip(action, -1.0, 1.0)


class PosturePolicy:
    """Command one posture, whatever the phone says."""

    def __init__(self, spec: ObservationSpec, params: dict[str, float]):
        self.name = "posture"
        self._action = posture_action(spec, params)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._action


def stance_table(spec: ObservationSpec, params: dict[str, float], action_scale_rad: float = 0.12
                 ) -> dict[str, float]:
    """The posture as ``QLearningConfig.stance_rad``: joint -> offset (rad) from the nominal pose,
    each moved inward where needed so that the stance +- ``action_scale_rad`` loses at most half
    of the ``MAX_CLAMPED_FRACTION`` of its range that robotd.daemon.policy_select's check allows."""
    cal = load_calibration()
    room = (1.0 - MAX_CLAMPED_FRACTION) * action_scale_rad
    out = {}
    for j, offset in zip(spec.controlled_joints, posture_action(spec, params) * spec.action_scale_rad):
        i = cal.index(j)
        low, high = cal.min_rad[i] - cal.nominal_rad[i] + room, cal.max_rad[i] - cal.nominal_rad[i] - room
        out[j] = round(float(np.clip(offset, low, high)), 4)
    return out


def posture_report(params: dict[str, float], episodes: int, seed: int) -> EvalReport:
    return evaluate_policy(PosturePolicy(ObservationSpec(), params), episodes, seed, BALANCE_TASK_ENV_ID)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--episodes", type=int, default=10, help="tuning episodes per trial")
    p.add_argument("--test-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--tilt-per-deg", type=float, default=0.0,
                   help="score = success - this * mean tilt (deg): prefer the more upright of equal stances")
    p.add_argument("--json", type=Path)
    p.add_argument("--toml", type=Path, help="write the best posture as a [stance_rad] table for robotd train --config")
    args = p.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=make_sampler("gp", args.seed, 5))
    study.enqueue_trial({name: 0.0 for name in POSTURE_SPACE})  # hold
    for k in range(args.trials):
        trial = study.ask()
        params = suggest_params(trial, POSTURE_SPACE)
        report = posture_report(params, args.episodes, TUNING_EVAL_SEED)
        study.tell(trial, eval_score(report.success_rate, report.mean_return) - args.tilt_per_deg * report.mean_tilt_deg)
        print(f"trial {k:3d} tuning {report.success_rate:.2f} ({report.mean_tilt_deg:.1f} deg)  " + ", ".join(f"{n} {v:+.2f}" for n, v in params.items()),
              flush=True)
    best = study.best_trial.params
    test = posture_report(best, args.test_episodes, EVAL_SEED)
    hold = evaluate_policy(load_policy("hold", load_calibration()), args.test_episodes, EVAL_SEED, BALANCE_TASK_ENV_ID)
    print(f"best posture on the test episodes: {test.success_rate:.2f} ({test.mean_tilt_deg:.1f} deg), hold "
          f"{hold.success_rate:.2f} ({hold.mean_tilt_deg:.1f} deg); tuning score {study.best_value:.2f}; "
          + ", ".join(f"{n} {v:+.2f}" for n, v in best.items()) + f"  {time.perf_counter() - t0:.0f} s")
    if args.toml:
        import tomli_w
        args.toml.write_text(tomli_w.dumps({"stance_rad": stance_table(ObservationSpec(), best)}))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json), "toml": str(args.toml)},
                                         "params": best, "stance_rad": stance_table(ObservationSpec(), best),
                                         "test_success": test.success_rate, "test_tilt_deg": test.mean_tilt_deg,
                                         "hold_success": hold.success_rate, "hold_tilt_deg": hold.mean_tilt_deg,
                                         "tuning_score": study.best_value}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
