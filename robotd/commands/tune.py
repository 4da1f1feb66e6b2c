"""``robotd tune``: Bayesian tuning (Optuna, GP sampler) of the learner in the simulator, or of PD gains on the robot.

    robotd tune --sim --trials 30 --minutes-per-trial 10 --storage sqlite:///tune.db
    robotd tune --port /dev/ttyACM0 --udp 0.0.0.0:5555 --phone-format sensagram --trials 8 \\
        --storage sqlite:///tune.db
    robotd tune --port sim --yes --trials 8 --seconds-per-trial 20    # the same against the simulated robot
    optuna-dashboard sqlite:///tune.db    # the studies in a browser (pip install optuna-dashboard: in no extra)

--trials N runs N more trials: the same command continues a study (interrupted, or on another
day), and several processes (on several machines, with a PostgreSQL storage URL) share one.
--sim writes the best configuration so far to OUT/best.toml, which `robotd train --config` takes
unchanged; --port prints the best PD gains as a `robotd run --policy pd:...` line. See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robotd.cli import _positive, _udp, doc_parser

LEARNER_STUDY = "learner"
PD_STUDY = "pd-gains"


def _parser() -> argparse.ArgumentParser:
    p = doc_parser("robotd tune", __doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="tune the learner's hyperparameters in the simulator")
    where.add_argument("--port", help="tune PD gains on the robot at this serial port, or 'sim' for the "
                                      "simulated robot")
    p.add_argument("--trials", type=int, help="trials to run in this invocation (needed for tuning; not with "
                                              "--show-space)")
    p.add_argument("--storage", default="sqlite:///tune.db",
                   help="Optuna storage URL (default sqlite:///tune.db; postgresql://... to share between machines)")
    p.add_argument("--study", help=f"study name (default {LEARNER_STUDY} with --sim, {PD_STUDY} with --port)")
    p.add_argument("--sampler", choices=("gp", "tpe", "random"), default="gp", help="default gp")
    p.add_argument("--startup-trials", type=int,
                   help="trials sampled at random before the model takes over (default 10 with --sim, 3 with --port)")
    p.add_argument("--sampler-seed", type=int, help="seed of the sampler (default: fresh; keep workers apart)")
    p.add_argument("--out", type=Path, help="trial directories and logs (default runs/tune-STUDY)")
    p.add_argument("--show-space", action="store_true", help="print the search space and exit")
    sim = p.add_argument_group("--sim: the learner")
    budget = sim.add_mutually_exclusive_group()
    budget.add_argument("--minutes-per-trial", type=_positive, help="each trial's training time (default 10)")
    budget.add_argument("--steps-per-trial", type=int, help="each trial's env steps instead")
    sim.add_argument("--config", type=Path, help="base TOML of QLearningConfig keys; the tuned keys override it")
    sim.add_argument("--pruner", choices=("median", "none"), default="median",
                     help="stop trials whose intermediate eval is below the median of earlier trials (default)")
    robot = p.add_argument_group("--port: PD gains on the robot")
    robot.add_argument("--udp", type=_udp, default=("0.0.0.0", 5555), metavar="HOST:PORT")
    robot.add_argument("--phone-format", default="auto")
    robot.add_argument("--allow", default=None, metavar="IP[,IP...]|first|any",
                       help="phone senders allowed, as for robotd run (default: the first sender)")
    robot.add_argument("--calibration", default=None, help="calibration TOML (default: the robot's, as robotd run)")
    robot.add_argument("--rate", type=_positive, default=50.0)
    robot.add_argument("--seconds-per-trial", type=_positive, default=20.0, help="length of each run (default 20)")
    robot.add_argument("--yes", action="store_true", help="do not wait for Enter before each trial")
    robot.add_argument("--sim-seed", type=int, default=0, metavar="N",
                       help="under --port sim: the simulated robot's seed; every trial meets its pushes (default 0)")
    return p


def _open(args: argparse.Namespace, problem: str, default_startup: int):
    from policies.tuning import make_sampler, open_study

    sampler = make_sampler(args.sampler, args.sampler_seed,
                           args.startup_trials if args.startup_trials is not None else default_startup)
    pruner = None
    if problem == LEARNER_STUDY:
        import optuna

        pruner = optuna.pruners.NopPruner()
        if args.pruner == "median":
            # The first eval of a trial is never pruned: every trial starts at the untrained
            # network's level, and the median says nothing there.
            pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2 * args.base.eval_every_steps)
    study = open_study(args.storage, args.study, sampler, pruner, heartbeat=problem == LEARNER_STUDY)
    known = study.user_attrs.get("problem")
    if known is None:
        study.set_user_attr("problem", problem)
    elif known != problem:
        raise ValueError(f"--study {args.study}: that study tunes {known}, not {problem}; choose another name")
    return study


def _learner_base(args: argparse.Namespace):
    from policies.qlearning import QLearningConfig
    from robotd.commands.train import _calibration, _load_toml
    from sim.balance_task import BALANCE_TASK_DISCRETE_ENV_ID

    values = _load_toml(args.config) if args.config is not None else {}
    values["env_id"] = BALANCE_TASK_DISCRETE_ENV_ID
    # The trials train for the robot robotd train would (its calibration, found the same way),
    # so best.toml is what `robotd train --config` runs.
    values["calibration"] = _calibration(None, True, BALANCE_TASK_DISCRETE_ENV_ID)
    return QLearningConfig.from_dict(values, source=str(args.config or "defaults"))


def tune_learner(args: argparse.Namespace) -> int:
    from policies.qlearning import write_config_toml
    from policies.tuning import (LearnerBudget, best_config, enqueue_once, learner_objective, learner_params,
                                 tuning_base)

    base = args.base
    budget = LearnerBudget(steps=args.steps_per_trial, minutes=None if args.steps_per_trial else
                           (args.minutes_per_trial or 10.0))
    study = _open(args, LEARNER_STUDY, 10)
    if enqueue_once(study, learner_params(base)):
        print("new study: the base config goes first", flush=True)
    out = args.out or Path("runs") / f"tune-{args.study}"
    out.mkdir(parents=True, exist_ok=True)
    per_trial = f"{budget.minutes:g} min" if budget.minutes is not None else f"{budget.steps} steps"
    print(f"robotd tune: study {args.study!r} in {args.storage} ({len(study.trials)} trials so far), sampler "
          f"{args.sampler}, {args.trials} trials of {per_trial} -> {out}", flush=True)
    objective = learner_objective(tuning_base(base, budget), out, base.eval_seed,
                                  log=lambda line: print(line, flush=True))
    rc = 0
    try:
        study.optimize(objective, n_trials=args.trials, catch=(Exception,))
    except KeyboardInterrupt:
        print("interrupted: the trial is recorded as failed and its setting comes first next time; the same "
              "command continues the study", flush=True)
        rc = 130
    best = best_config(study)
    if best is None:
        print("no completed trial yet: no best config")
        return rc
    path = out / "best.toml"
    write_config_toml(best, path)
    print(f"best: trial {study.best_trial.number}, score {study.best_trial.value:.4f} -> {path} "
          f"(robotd train --sim --config {path})")
    return rc


def tune_robot(args: argparse.Namespace) -> int:
    from calibration import find_calibration
    from robotd.daemon.run import RunConfig
    from robotd.commands.robot_tuning import RobotTuneConfig, tune_on_robot

    if not args.yes and not sys.stdin.isatty():
        # Each trial waits for Enter; from a script or a closed stdin nobody can give it.
        raise ValueError("--port: each trial waits for Enter at a terminal, and stdin is not one; give --yes to "
                         "run the trials without asking")
    run = RunConfig(port=args.port, udp_host=args.udp[0], udp_port=args.udp[1], phone_format=args.phone_format,
                    allow=args.allow, calibration_path=str(find_calibration(args.calibration)), rate_hz=args.rate)
    study = _open(args, PD_STUDY, 3)
    out = args.out or Path("runs") / f"tune-{args.study}"
    print(f"robotd tune: study {args.study!r} in {args.storage} ({len(study.trials)} trials so far), sampler "
          f"{args.sampler}, {args.trials} trials of {args.seconds_per_trial:g} s on {args.port} -> {out}", flush=True)
    return tune_on_robot(study, RobotTuneConfig(run, args.trials, args.seconds_per_trial, out, yes=args.yes,
                                                sim_seed=args.sim_seed))


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import optuna  # noqa: F401  (the [train] extra: without it robotd's entry point names the extra)
    import sqlalchemy.exc  # optuna's storage layer

    from calibration import CalibrationError
    from policies.tuning import LEARNER_SPACE, PD_GAINS_SPACE, describe_space
    from robotd.board.link import BoardHandshakeError
    from robotd.daemon.policy_select import PolicyLoadError

    if args.show_space:
        print("\n".join(describe_space(LEARNER_SPACE if args.sim else PD_GAINS_SPACE)))
        return 0
    if args.trials is None or args.trials < 1:
        print("robotd tune: --trials must be >= 1", file=sys.stderr)
        return 2
    args.study = args.study or (LEARNER_STUDY if args.sim else PD_STUDY)
    try:
        if args.sim:
            args.base = _learner_base(args)
            return tune_learner(args)
        return tune_robot(args)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"robotd tune: --storage {args.storage}: {reason}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError):  # a missing extra (torch for the GP sampler...): named by robotd
            raise
        print(f"robotd tune: --storage {args.storage}: {exc}", file=sys.stderr)  # no driver for that database
        return 2
    except (ValueError, CalibrationError, BoardHandshakeError, PolicyLoadError, OSError) as exc:
        print(f"robotd tune: {exc}", file=sys.stderr)
        return 2
