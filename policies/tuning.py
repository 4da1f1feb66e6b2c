"""Bayesian tuning with Optuna: the search spaces, the study, and the learner's objective.

Two problems are tuned, each with its space written down once here:

* :data:`LEARNER_SPACE`: the Q-learner's main knobs (:class:`policies.qlearning.QLearningConfig`).
  A trial is a short :func:`policies.qlearning.train` run; its value is :func:`eval_score` of
  its best periodic greedy eval (the checkpoint a training run delivers as ``best``). Every
  eval is reported as an intermediate value, so the pruner ends hopeless trials early.
* :data:`PD_GAINS_SPACE`: the deployment parameters of the PD balance policy
  (:class:`policies.baselines.PdGains`), tuned on the robot by ``robotd tune --port`` (the
  ask/tell loop is in :mod:`robotd.commands.robot_tuning`: it runs the daemon, which this package must
  not import) and in the simulator by ``bench/tune.py``.

A study lives in an Optuna storage (``sqlite:///tune.db``, or a PostgreSQL URL that several
machines share); :func:`open_study` loads it if it exists, so the same command continues it.
Heartbeats mark the trial of a killed worker as failed instead of leaving it running forever,
and its setting is tried again once (:func:`retry_once`), as an interrupted trial's is.

Tuning selects on the episodes from :data:`TUNING_EVAL_SEED`, not on ``EVAL_SEED``'s that
``robotd eval`` and the docs report: a configuration chosen on the reporting episodes would
look better there than it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from policies.baselines import PdGains
from policies.evaluation import TUNING_EVAL_SEED

if TYPE_CHECKING:
    import optuna

    from policies.qlearning import QLearningConfig

SAMPLERS = ("gp", "tpe", "random")
#: eval_score's tie break: return contributes at most this much, less than one episode of
#: success out of 1000, so success always ranks first.
RETURN_TIE_BREAK = 1e-3
RETURN_SCALE = 1000.0  # returns of the balance task are ~1000 per 10 s episode
#: The user attribute of a retried trial: the number of the trial it tries again.
RETRY_OF = "retry_of"


@dataclass(frozen=True)
class Knob:
    """One dimension of a search space: an Optuna float or int distribution."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    step: int | None = None
    why: str = ""

    def suggest(self, trial: "optuna.Trial", name: str) -> float | int:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        return f"{kind} {self.low:g}..{self.high:g}" + (" log" if self.log else "") + \
            (f" step {self.step}" if self.step else "")


#: The learner's search space. Keys are QLearningConfig fields, except ``burn_in_fraction``:
#: ``burn_in = round(burn_in_fraction * train_len)`` keeps burn_in <= train_len for every draw
#: without a conditional space. Bins per joint are not here: they belong to the observation
#: contract (sim.observation.ObservationSpec.n_bins), not to the learner's config.
LEARNER_SPACE: dict[str, Knob] = {
    "lr": Knob(3e-5, 3e-3, log=True, why="Adam step size"),
    "n_step": Knob(1, 10, integer=True, why="rewards summed before bootstrapping"),
    "gamma": Knob(0.95, 0.995, why="discount: 0.98 is a 1 s horizon at 50 Hz"),
    "target_update_every": Knob(25, 2000, log=True, integer=True, why="learner updates between target copies"),
    "train_len": Knob(10, 80, integer=True, step=10, why="trained steps per replayed sequence"),
    "burn_in_fraction": Knob(0.0, 1.0, why="burn-in steps as a fraction of train_len"),
    "epsilon_start": Knob(0.05, 1.0, why="per-joint exploration at the start"),
    "epsilon_decay_steps": Knob(10_000, 500_000, log=True, integer=True, why="env steps to decay it"),
    "epsilon_base": Knob(0.01, 0.3, log=True, why="Ape-X base epsilon of the actors"),
    "explore_max_ticks": Knob(1, 25, log=True, integer=True, why="ticks an exploring joint holds its random bin"),
    "replay_ratio": Knob(0.5, 16.0, log=True, why="trained steps per env step"),
    "decision_ticks": Knob(1, 4, integer=True, why="ticks between the policy's decisions (bins held between)"),
}

#: The PD policy's gains (PdGains fields): joint offset per radian of tilt and per rad/s.
PD_GAINS_SPACE: dict[str, Knob] = {
    "kp_hip": Knob(0.0, 1.5, why="hip offset per rad of torso tilt"),
    "kp_ankle": Knob(0.0, 0.6, why="ankle offset per rad of torso tilt"),
    "kd_hip": Knob(0.0, 0.1, why="hip offset per rad/s of tilt rate"),
    "kd_ankle": Knob(0.0, 0.1, why="ankle offset per rad/s of tilt rate"),
}


def describe_space(space: dict[str, Knob]) -> list[str]:
    return [f"{name:20s} {knob.describe():28s} {knob.why}" for name, knob in space.items()]


def suggest_params(trial: "optuna.Trial", space: dict[str, Knob]) -> dict[str, float | int]:
    return {name: knob.suggest(trial, name) for name, knob in space.items()}


# ---------------------------------------------------------------------------------------------
# The study


def make_sampler(name: str, seed: int | None, n_startup_trials: int) -> "optuna.samplers.BaseSampler":
    """``gp`` (default: a Matern-5/2 GP with log-EI, constraint-aware), ``tpe`` or ``random``."""
    import optuna

    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "tpe":  # constant liar: parallel workers do not all propose the same setting
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--sampler {name!r}: not one of {', '.join(SAMPLERS)}")


def open_study(storage_url: str, study_name: str, sampler: "optuna.samplers.BaseSampler",
               pruner: "optuna.pruners.BasePruner | None" = None, heartbeat: bool = True) -> "optuna.Study":
    """Create the study or load it (``load_if_exists``): running the same command continues it.

    With ``heartbeat`` (for ``study.optimize``; the robot's ask/tell loop has its own recovery)
    the running trial's worker writes a heartbeat every 10 s, so that a later worker, when it
    starts a trial, marks a trial whose process died without a word (power cut, SIGKILL) and
    whose heartbeat is 60 s old as failed, and enqueues its setting again (:func:`retry_once`).
    """
    import time
    import warnings

    import optuna
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    storage_url, heartbeat_interval=10, grace_period=60,
                    heartbeat_stale_trial_callback=lambda study, trial: retry_once(study, trial, "worker killed")) \
                    if heartbeat else optuna.storages.RDBStorage(storage_url)
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers that start together on an empty database race to create its tables;
            # the loser finds them there on the next try.
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)
    return optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def enqueue_once(study: "optuna.Study", params: dict[str, Any]) -> bool:
    """Enqueue known-good ``params`` first, unless the study already has trials (a resumed study)."""
    if study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={"enqueued": "known-good"})
    return True


def retry_once(study: "optuna.Study", trial: "optuna.Trial | optuna.trial.FrozenTrial", why: str) -> bool:
    """Enqueue the setting of a trial that was killed or interrupted mid-way, unless that trial was
    itself such a retry: its setting said nothing yet, but one that keeps dying is not tried forever."""
    if RETRY_OF in trial.user_attrs:
        return False
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number,
                                                        "enqueued": f"retry of trial {trial.number} ({why})"})
    return True


def eval_score(success_rate: float, mean_return: float) -> float:
    """Success rate first; the mean return only breaks ties (it adds less than RETURN_TIE_BREAK)."""
    return float(success_rate) + RETURN_TIE_BREAK * math.tanh(float(mean_return) / RETURN_SCALE)


# ---------------------------------------------------------------------------------------------
# The learner


def learner_config(params: dict[str, Any], base: "QLearningConfig") -> "QLearningConfig":
    """``base`` with a trial's parameters set (the space's names, ``burn_in_fraction`` resolved)."""
    from policies.qlearning import QLearningConfig

    values = base.to_dict()
    for name, value in params.items():
        if name == "burn_in_fraction":
            continue
        values[name] = value
    values["burn_in"] = int(round(params["burn_in_fraction"] * values["train_len"]))
    return QLearningConfig.from_dict(values, source="tuning parameters")


def learner_params(cfg: "QLearningConfig") -> dict[str, float | int]:
    """The space's parameters of a config (to enqueue the base config as a known-good first trial)."""
    params = {name: getattr(cfg, name) for name in LEARNER_SPACE if name != "burn_in_fraction"}
    params["burn_in_fraction"] = cfg.burn_in / cfg.train_len
    return params


@dataclass(frozen=True)
class LearnerBudget:
    """How long each trial trains: env steps, or wall-clock minutes (whichever the user gave)."""

    steps: int | None = None
    minutes: float | None = None

    def apply(self, cfg: "QLearningConfig") -> "QLearningConfig":
        if self.minutes is not None:  # and the config's total_steps, whichever comes first
            return replace(cfg, minutes=self.minutes)
        return replace(cfg, total_steps=self.steps if self.steps is not None else cfg.total_steps, minutes=None)


def tuning_base(base: "QLearningConfig", budget: LearnerBudget) -> "QLearningConfig":
    """The base config every trial starts from: the budget and the tuning episodes set."""
    return replace(budget.apply(base), eval_seed=TUNING_EVAL_SEED)


def deliverable_config(cfg: "QLearningConfig", base_eval_seed: int) -> "QLearningConfig":
    """What the best-config TOML holds: the trial's config with the base config's ``eval_seed``."""
    return replace(cfg, eval_seed=base_eval_seed)


def learner_objective(base: "QLearningConfig", out_dir: Path, base_eval_seed: int,
                      log: Callable[[str], None] = print) -> Callable[["optuna.Trial"], float]:
    """The objective of ``robotd tune --sim``: train a trial's config, score its evals, prune."""
    import optuna

    from policies.qlearning import train

    def run_trial(trial: optuna.Trial) -> float:
        cfg = learner_config(suggest_params(trial, LEARNER_SPACE), base)
        run_dir = fresh_path(out_dir / f"trial-{trial.number:04d}")
        trial.set_user_attr("config", deliverable_config(cfg, base_eval_seed).to_dict())
        trial.set_user_attr("run_dir", str(run_dir))
        log(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            + f" -> {run_dir}")
        scores: list[float] = []
        pruned = {"at": None}
        evaluated_at = {"steps": -1}

        def record(env_steps: int, success_rate: float, mean_return: float) -> None:
            score = eval_score(success_rate, mean_return)
            scores.append(score)
            evaluated_at["steps"] = env_steps
            trial.report(score, env_steps)
            log(f"trial {trial.number}: {env_steps} steps, success {success_rate:.2f}, return {mean_return:.1f}, "
                f"score {score:.4f}")

        def on_eval(state: Any, result: dict[str, Any]) -> bool:
            record(state.env_steps, result["eval_success"], result["eval_return"])
            if trial.should_prune():
                pruned["at"] = state.env_steps
                return True
            return False

        info = train(cfg, run_dir, progress=False, on_eval=on_eval)
        if info.interrupted:
            raise KeyboardInterrupt
        if pruned["at"] is not None:
            log(f"trial {trial.number}: pruned at {pruned['at']} steps")
            raise optuna.TrialPruned()
        if evaluated_at["steps"] != info.state.env_steps:  # a minutes budget ends between evals
            result = evaluate_checkpoint(run_dir / "last.safetensors", cfg)
            record(info.state.env_steps, result.success_rate, result.mean_return)
        return max(scores)

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except KeyboardInterrupt:  # in training (saved) or around it
            trial.set_user_attr("interrupted", True)
            retry_once(trial.study, trial, "interrupted")
            raise  # Optuna records the trial as failed and stops the study

    return objective


def fresh_path(path: Path) -> Path:
    """``path``, or ``path`` with ``-1``, ``-2``... before its suffix if taken (an earlier study in
    the same folder, since deleted, numbered its trials from 0 too): nothing is overwritten."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def evaluate_checkpoint(path: Path, cfg: "QLearningConfig") -> Any:
    """The periodic eval's episodes for a saved checkpoint (the run's final weights)."""
    from policies.evaluation import evaluate_policy
    from policies.runtime import load_policy_checkpoint

    return evaluate_policy(load_policy_checkpoint(path, calibration_identity=None), cfg.eval_episodes,
                           cfg.eval_seed, name="tuning")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def best_config(study: "optuna.Study") -> "QLearningConfig | None":
    """The config of the study's best finished trial (any worker's), or None before the first one."""
    from policies.qlearning import QLearningConfig

    try:
        best = study.best_trial
    except ValueError:  # nothing completed yet
        return None
    return QLearningConfig.from_dict(best.user_attrs["config"], source=f"trial {best.number}")


def pd_gains(params: dict[str, Any]) -> PdGains:
    """The gains a trial's params name (a space may hold more of PdGains than PD_GAINS_SPACE does)."""
    known = {f.name for f in fields(PdGains)}
    return PdGains(**{name: float(value) for name, value in params.items() if name in known})


def known_good_pd_params(space: dict[str, Knob] = PD_GAINS_SPACE) -> dict[str, float]:
    """The shipped PdGains, as the params of ``space``: the first trial of every PD study."""
    return {k: v for k, v in asdict(PdGains()).items() if k in space}
