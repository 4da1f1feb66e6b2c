"""``robotd tune --port``: a few trials of PD gains on the robot, one timed daemon run each.

Trials on a robot are slow and each risks a fall, so the loop is Optuna's ask/tell, one trial
at a time, with the operator in it:

1. ``study.ask()`` proposes gains from :data:`policies.tuning.PD_GAINS_SPACE` (the shipped
   PdGains are enqueued as the first trial of a new study, and a trial that was interrupted is
   enqueued again, so the next session starts with it);
2. the operator is told the setting and presses Enter with the robot hanging on its string
   (``--yes`` skips the question: ``--port sim`` runs unattended);
3. the daemon runs for ``--seconds-per-trial`` exactly as ``robotd run`` does, with
   ``stop_on_fall``: a fall ends the run in the safe pose at once;
4. the trial is scored from its latency log alone (:func:`score_log`: what the daemon saw of
   the phone's orientation and what it commanded), never from anything a real robot lacks;
   a fall is a violated constraint (``trial.set_constraint("fall", 1)``), which the GP sampler
   models separately from the score.

Ctrl-C during a run stops the daemon the usual way (safe pose, log flushed); between runs the
daemon is not running and the board holds the safe pose it was left in. Either way the trial
is recorded as failed, its gains are enqueued again, and the same command resumes the study.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from policies.baselines import pd_spec
from policies.tuning import PD_GAINS_SPACE, enqueue_once, fresh_path, known_good_pd_params, pd_gains, suggest_params
from robotd.daemon.run import RunConfig, RunSummary, prepare_run, run_daemon
from robotd.logs.logread import read_log
from robotd.commands.replay import torso_angles_rad
from sim.observation import UPRIGHT_TILT_DEG  # upright as in the task's success rule and the ground truth

#: Score = upright fraction - SCORE_PER_TILT_DEG * mean tilt (deg) - SCORE_PER_SMOOTHNESS * smoothness:
#: 10 degrees of mean tilt cost as much as 10 % of the time upright.
SCORE_PER_TILT_DEG = 0.01
SCORE_PER_SMOOTHNESS = 1.0


@dataclass(frozen=True)
class TrialScore:
    """What one trial's latency log says about the setting (only the daemon's own view)."""

    score: float
    upright_fraction: float  # of the planned time after the start-up move, upright and following the policy
    upright_s: float
    window_s: float
    mean_tilt_deg: float  # while following the policy
    worst_tilt_deg: float
    smoothness: float  # mean squared action change per tick, summed over joints (lower is smoother)
    fell: bool


def score_log(path: Path | str, planned_s: float) -> TrialScore:
    """Score a trial from its latency log: time upright, tilt and smoothness, from the phone's view.

    The window is the planned run minus the start-up move, so a trial a fall ended early
    counts the time it did not run as not upright.
    """
    log = read_log(path)
    period_s = 1.0 / (log.rate_hz or 50.0)
    following = log.mode_is("run")
    tilt_deg = np.degrees(torso_angles_rad(log.quat_wxyz)[2])
    upright = following & (np.nan_to_num(tilt_deg, nan=180.0) < UPRIGHT_TILT_DEG)
    startup_s = float(log.mode_is("startup").sum()) * period_s
    window_s = max(planned_s - startup_s, period_s)
    upright_s = float(upright.sum()) * period_s
    seen = following & np.isfinite(tilt_deg)
    mean_tilt = float(tilt_deg[seen].mean()) if seen.any() else 90.0
    worst_tilt = float(np.nanmax(tilt_deg)) if np.isfinite(tilt_deg).any() else 90.0
    rows = np.flatnonzero(following)
    actions = np.array([t.action for t in log.raw_ticks(rows)], dtype=np.float64) if rows.size else np.zeros((0, 1))
    consecutive = np.diff(log.seq[rows]) == 1 if rows.size else np.zeros(0, dtype=bool)
    changes = np.nansum(np.diff(actions, axis=0) ** 2, axis=1)[consecutive] if len(actions) > 1 else np.zeros(0)
    smoothness = float(changes.mean()) if changes.size else 0.0
    fell = bool(log.mode_is("fallen").any() or log.has_flag("fall").any() or any(e.name == "fall" for e in log.events))
    fraction = min(upright_s / window_s, 1.0)
    score = fraction - SCORE_PER_TILT_DEG * mean_tilt - SCORE_PER_SMOOTHNESS * smoothness
    return TrialScore(score, fraction, upright_s, window_s, mean_tilt, worst_tilt, smoothness, fell)


@dataclass
class RobotTuneConfig:
    """``robotd tune --port``'s settings; ``run`` is the daemon config every trial starts from."""

    run: RunConfig
    trials: int
    seconds_per_trial: float
    out_dir: Path
    yes: bool = False
    sim_seed: int = 0  # under --port sim: every trial meets this seed's pushes


def run_trial_daemon(cfg: RunConfig, out: TextIO, sim_seed: int = 0) -> tuple[RunSummary, dict[str, Any]]:
    """One timed daemon run; under ``--port sim`` against a freshly started simulated robot.

    Returns the summary and, under sim only, the simulator's ground truth: recorded beside the
    trial for comparison, never used in its score.
    """
    prepared = prepare_run(cfg)  # every file checked before a port opens or a process starts
    if cfg.port != "sim":
        return asyncio.run(run_daemon(cfg, out, prepared)), {}
    from robotd.commands.simrun import daemon_config_for, start_simulated_robot

    robot, _ = start_simulated_robot(cfg.udp_port, cfg.phone_format, cfg.calibration_path, out, "robotd tune",
                                     seed=sim_seed)
    try:
        summary = asyncio.run(run_daemon(daemon_config_for(cfg, robot), out, prepared))
        if summary.stop_reason == "signal":  # Ctrl-C reached the robot process as well
            robot.kill()
            return summary, {}
        truth = robot.stop()
    except BaseException:
        robot.kill()
        raise
    return summary, {"upright_s": truth.upright_s, "mean_tilt_deg": truth.mean_tilt_deg, "falls": truth.falls}


def _retry_later(study: Any, trial: Any, why: str) -> None:
    """Record the trial as failed and enqueue its setting again, so the next session starts with it."""
    import optuna

    trial.set_user_attr("failed", why)
    params = dict(trial.params)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"enqueued": f"retry of trial {trial.number} ({why})"})


def recover_abandoned(study: Any, out: TextIO) -> None:
    """Trials left running by a session that was killed: failed, their settings enqueued again.

    One robot is tuned by one session at a time, so a running trial at start-up is an orphan.
    """
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        print(f"trial {t.number} was left running by an earlier session: failed, its setting enqueued again",
              file=out)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"enqueued": f"retry of trial {t.number} (session killed)"})


def tune_on_robot(study: Any, cfg: RobotTuneConfig, out: TextIO = sys.stdout,
                  ask: Callable[[str], str] = input) -> int:
    """Run ``cfg.trials`` trials; 0 when done, 130 on Ctrl-C (the study resumes with the same command)."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    recover_abandoned(study, out)
    if enqueue_once(study, known_good_pd_params()):
        print("new study: the shipped PD gains go first", file=out)
    for _ in range(cfg.trials):
        trial = study.ask()
        gains = pd_gains(suggest_params(trial, PD_GAINS_SPACE))
        spec = pd_spec(gains)
        log_path = fresh_path(cfg.out_dir / f"trial-{trial.number:04d}.log")  # logs are never overwritten
        trial.set_user_attr("policy", spec)
        trial.set_user_attr("log", str(log_path))
        print(f"trial {trial.number}: --policy {spec}", file=out, flush=True)
        try:
            if not cfg.yes:
                answer = ask(f"trial {trial.number}: hang the robot on its string, then Enter to run "
                             f"{cfg.seconds_per_trial:g} s (q to stop): ")
                if answer.strip().lower() in ("q", "quit"):
                    _retry_later(study, trial, "skipped by the operator")
                    print("stopped; the same command continues the study", file=out)
                    return 0
            run_cfg = replace(cfg.run, policy=spec, duration_s=cfg.seconds_per_trial, log_path=str(log_path),
                              stop_on_fall=True)
            summary, truth = run_trial_daemon(run_cfg, sys.stderr, cfg.sim_seed)
        except (KeyboardInterrupt, EOFError):
            _retry_later(study, trial, "interrupted")
            print(f"\ninterrupted: the robot is in its safe pose; trial {trial.number} is recorded as failed and "
                  f"its setting comes first next time (run the same command)", file=out)
            return 130
        except Exception as exc:
            _retry_later(study, trial, f"crashed: {exc}")
            print(f"trial {trial.number} failed: {exc}", file=out)
            raise
        if summary.stop_reason == "signal":
            _retry_later(study, trial, "interrupted")
            print(f"interrupted: the robot is in its safe pose; trial {trial.number} is recorded as failed and "
                  f"its setting comes first next time (run the same command)", file=out)
            return 130
        result = score_log(log_path, cfg.seconds_per_trial)
        for key, value in asdict(result).items():
            trial.set_user_attr(key, value)
        for key, value in truth.items():
            trial.set_user_attr(f"sim_ground_truth_{key}", value)  # for comparison only
        trial.set_constraint("fall", 1.0 if result.fell else 0.0)
        study.tell(trial, result.score)
        print(f"trial {trial.number}: score {result.score:.3f} (upright {result.upright_fraction:.2f} of "
              f"{result.window_s:.1f} s, mean tilt {result.mean_tilt_deg:.1f} deg, smoothness "
              f"{result.smoothness:.4f})" + (", FELL: constraint violated" if result.fell else ""), file=out,
              flush=True)
    try:
        best = study.best_trial
        print(f"best so far: trial {best.number}, score {best.value:.3f}: robotd run --policy "
              f"{best.user_attrs['policy']}", file=out)
    except ValueError:
        print("no trial without a fall yet", file=out)
    return 0
