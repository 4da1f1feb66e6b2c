"""The stance search behind ``robotd stance``: Bayesian optimisation over one constant leg posture.

A policy trained around a stance holds it with action zero and learns to react around it; the
shipped policy's stance (policies/env_defaults.toml) came from this search. Why a stance at all:
bench/push_limits.py finds that holding still loses the pushes whose capture point leaves the
soles, and that one well-chosen centre-of-mass placement would keep up to 0.89 of the test
episodes (chosen knowing their pushes, so a ceiling). The stance is set while the robot is
lowered onto its feet: legs spread before touchdown land wider, a crouch lowers the centre of
mass, a lean moves it over the soles. The search tunes five posture knobs (action units: 1 is
the action scale, 0.4 rad; see :func:`posture_action`) with the GP sampler on tuning episodes
from ``TUNING_EVAL_SEED`` (never the test episodes), ``hold`` (all zeros) enqueued first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from calibration import Calibration, load_calibration
from policies.evaluation import EvalReport, evaluate_policy
from policies.tuning import TUNING_EVAL_SEED, Knob, eval_score, make_sampler, suggest_params
from sim.balance_task import BALANCE_TASK_ENV_ID
from sim.env import balance_task_config, centred_actuator_delay
from sim.observation import MAX_CLAMPED_FRACTION, ObservationSpec

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


def stance_table(spec: ObservationSpec, params: dict[str, float], action_scale_rad: float = 0.12,
                 calibration: Calibration | None = None) -> dict[str, float]:
    """The posture as ``QLearningConfig.stance_rad``: joint -> offset (rad) from the nominal pose,
    each moved inward where needed so that the stance +- ``action_scale_rad`` loses at most half
    of the ``MAX_CLAMPED_FRACTION`` of its range that the contract's mismatch check allows
    (under ``calibration``'s limits; None: the calibration every command finds)."""
    cal = calibration or load_calibration()
    room = (1.0 - MAX_CLAMPED_FRACTION) * action_scale_rad
    out = {}
    for j, offset in zip(spec.controlled_joints, posture_action(spec, params) * spec.action_scale_rad):
        i = cal.index(j)
        low, high = cal.min_rad[i] - cal.nominal_rad[i] + room, cal.max_rad[i] - cal.nominal_rad[i] - room
        out[j] = round(float(np.clip(offset, low, high)), 4)
    return out


def posture_report(params: dict[str, float], episodes: int, seed: int, calibration: Calibration) -> EvalReport:
    """The posture held through ``episodes`` balance-task episodes from ``seed`` on ``calibration``'s
    robot, with the delays ``robotd train`` gives it (centred on its dead time): the stance is
    found on the robot the policy will then be trained for."""
    spec = ObservationSpec()
    config = centred_actuator_delay(balance_task_config(obs_spec=spec), calibration.servo_timing.dead_time_ms)
    return evaluate_policy(PosturePolicy(spec, params), episodes, seed, BALANCE_TASK_ENV_ID,
                           {"calibration": calibration, "config": config})


@dataclass(frozen=True)
class StanceSearch:
    """The best posture of a search and its tuning score (success, tilt-penalised)."""

    params: dict[str, float]
    tuning_score: float


def search_stance(trials: int, episodes: int, calibration: Calibration, seed: int = 0, tilt_per_deg: float = 0.0,
                  log: Callable[[str], Any] = print) -> StanceSearch:
    """GP-BO over :data:`POSTURE_SPACE` on ``episodes`` tuning episodes per trial, ``hold`` first.

    The score is ``eval_score(success, return) - tilt_per_deg * mean tilt (deg)``: a positive
    ``tilt_per_deg`` prefers the more upright of stances that succeed equally often.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler("gp", seed, 5))
    study.enqueue_trial({name: 0.0 for name in POSTURE_SPACE})  # hold
    for k in range(trials):
        trial = study.ask()
        params = suggest_params(trial, POSTURE_SPACE)
        report = posture_report(params, episodes, TUNING_EVAL_SEED, calibration)
        study.tell(trial, eval_score(report.success_rate, report.mean_return) - tilt_per_deg * report.mean_tilt_deg)
        log(f"trial {k:3d} tuning {report.success_rate:.2f} ({report.mean_tilt_deg:.1f} deg)  "
            + ", ".join(f"{n} {v:+.2f}" for n, v in params.items()))
    return StanceSearch(dict(study.best_trial.params), float(study.best_value))
