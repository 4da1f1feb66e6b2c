"""``robotd train``: recurrent Q-learning of a balance policy in the simulator, or on any gymnasium env.

    robotd train --sim --minutes 30 --seed 1 --out runs/balance
    robotd train --env CartPole-v1 --steps 50000 --arch gru
    robotd train --resume runs/balance --minutes 30     # continue a run for 30 more minutes

The run directory holds ``last.safetensors`` / ``best.safetensors`` (the project's checkpoint
format, training config and eval metrics in the metadata), ``metrics.csv``,
``learning_curve.png``, the resolved ``config.toml`` (``--config`` takes it unchanged), and
``learner.pt`` + ``replay.npz`` for ``--resume``. Ctrl-C saves all of it and exits.
``--steps`` / ``--minutes`` are a new run's whole budget. On ``--resume`` they are more: that many
env steps or minutes on top of what the run has had; without either, a resumed run goes on to
its own budget (config.toml), and one that has already spent it is refused.

The robot's envs are built from its calibration (``--calibration FILE``, else the file
``robotd run`` reads): its joint limits, its ``dead_time_ms`` as the centre of the randomised
actuator delay (docs/sim.md), and its identity in the checkpoints, so ``robotd run`` with the
same file runs them without a calibration warning. config.toml records it for ``--resume``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from policies.checkpoint import ARCH_KINDS
from robotd.cli import _positive, doc_parser
from sim.balance_task import BALANCE_TASK_DISCRETE_ENV_ID


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = doc_parser("robotd train", __doc__)
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--sim", action="store_true", help=f"the robot's balance task ({BALANCE_TASK_DISCRETE_ENV_ID})")
    task.add_argument("--env", metavar="ENV_ID", help="any gymnasium env id with a flat Box observation and a "
                                                      "Discrete, MultiDiscrete or Box action space")
    task.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR (its config.toml)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int, help="env steps over all actors (default: the config's, 1M); "
                                                            "with --resume: that many more")
    budget.add_argument("--minutes", type=_positive, help="wall-clock budget in minutes; with --resume: that "
                                                                "many more")
    p.add_argument("--seed", type=int, help="seed of everything (default 0)")
    p.add_argument("--out", type=Path, help="run directory (default runs/train-<date>-<time>)")
    p.add_argument("--arch", choices=ARCH_KINDS, help="network kind (default rwkv4)")
    p.add_argument("--num-envs", type=int, help="environments, each in its own actor process (default 2)")
    p.add_argument("--config", type=Path, help="TOML file of QLearningConfig keys (see docs/learning.md); "
                                                 "on --sim it replaces the shipped recipe (the stance) as a whole")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="the robot's calibration TOML, as robotd run takes it (default: the same lookup, "
                        "$XDG_CONFIG_HOME/robotd/robot.toml, else the packaged template); --sim and the robot's "
                        "--env ids only")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where the learner runs (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    return p


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path}: not valid TOML: {exc}") from None


def robot_env_ids() -> set[str]:
    from sim.envs import ENV_IDS

    return set(ENV_IDS)


def _spent(run_dir: Path) -> tuple[int, float]:
    """(env steps, wall-clock minutes) the run in ``run_dir`` has had, from its resume state
    (read as the resume reads it: a damaged file is the same one-line error)."""
    from policies.qlearning import RESUME_STATE, read_learner_state

    state = read_learner_state(run_dir / RESUME_STATE)["state"]
    return int(state["env_steps"]), float(state["elapsed_s"]) / 60.0


def _calibration(option: Path | None, robot: bool, env_id: str) -> str | None:
    """The calibration a new run trains for, as an absolute path (``--resume`` from anywhere finds
    it): ``--calibration``, else what ``robotd run`` would read; None off the robot. ValueError
    (CalibrationError) if the file is missing or invalid, before anything starts."""
    from calibration import find_calibration, load_calibration

    if not robot:
        if option is not None:
            raise ValueError(f"--calibration: applies to the robot's envs only, not {env_id}")
        return None
    path = find_calibration(option)
    load_calibration(path)  # its errors name the file as the user gave it
    return str(path.resolve())


def resolve_config(args: argparse.Namespace) -> tuple[Any, Path, bool]:
    """(config, run directory, resume?) from the command line; ValueError names the bad option or key.

    On ``--resume``, ``--steps`` / ``--minutes`` are turned into the totals ``train`` reads (what
    the run has had plus that much more), so ``--minutes 30`` is 30 more minutes, never a no-op.
    """
    # RESUME_STATE (the learner's resume file) marks a directory as a training run.
    from policies.qlearning import RESUME_STATE, QLearningConfig

    values: dict[str, Any] = {}
    steps, minutes = args.steps, args.minutes
    if args.resume is not None:
        run_dir = args.resume
        if not (run_dir / RESUME_STATE).exists() or not (run_dir / "config.toml").exists():
            raise ValueError(f"--resume {run_dir}: not a training run directory (no {RESUME_STATE} / config.toml)")
        values = _load_toml(run_dir / "config.toml")
        saved = QLearningConfig.from_dict(values, source=str(run_dir / "config.toml"))
        if args.arch is not None and args.arch != saved.arch:
            raise ValueError(f"--resume {run_dir}: the run directory belongs to a {saved.arch} network, "
                             f"not --arch {args.arch}")
        for option, given in (("--config", args.config), ("--calibration", args.calibration)):
            if given is not None:
                raise ValueError(f"{option}: a resumed run keeps its own config.toml")
        spent_steps, spent_minutes = _spent(run_dir)
        if steps is not None:
            steps += spent_steps
        elif minutes is not None:
            minutes += spent_minutes
        elif (0 < saved.total_steps <= spent_steps) or (saved.minutes is not None and saved.minutes <= spent_minutes):
            budget = " or ".join(([f"{saved.total_steps} steps"] if saved.total_steps else [])
                                 + ([f"{saved.minutes:g} min"] if saved.minutes is not None else []))
            raise ValueError(f"--resume {run_dir}: the run has had its whole budget ({budget}; it ran {spent_steps} "
                             f"steps in {spent_minutes:.1f} min); give --steps N or --minutes N for that much more")
    else:
        env_id = BALANCE_TASK_DISCRETE_ENV_ID if args.sim else args.env
        # The shipped per-env hyperparameters first, then --config's, then the command line's. The
        # robot's shipped recipe (its stance) is a whole: a --config replaces it, as the configs
        # of docs/learning.md's runs are written against the dataclass defaults.
        robot = env_id in robot_env_ids()
        values = {} if robot and args.config is not None else QLearningConfig.env_defaults(env_id)
        if values:
            print(f"robotd train: {env_id}'s defaults (policies/env_defaults.toml): "
                  + ", ".join(f"{k} {v}" for k, v in values.items()), flush=True)
        elif not robot:
            values["initial_greedy_bin"] = None  # "hold the nominal pose" means nothing off the robot
        if args.config is not None:
            from_file = _load_toml(args.config)
            QLearningConfig.from_dict(from_file, source=str(args.config))  # unknown keys fail here, named
            values |= from_file
        values["env_id"] = env_id
        values["calibration"] = _calibration(args.calibration, robot, env_id)
        run_dir = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        if (run_dir / RESUME_STATE).exists():
            raise ValueError(f"--out {run_dir}: already holds a training run; continue it with --resume {run_dir} "
                             f"or choose another directory")
    overrides = {"total_steps": steps, "minutes": minutes, "seed": args.seed, "arch": args.arch,
                 "num_envs": args.num_envs, "device": args.device}
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    if steps is not None:
        values.pop("minutes", None)
    if minutes is not None:
        values["total_steps"] = 0  # --minutes is the budget, not "or 1M steps, whichever first"
    cfg = QLearningConfig.from_dict(values)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device here")
    return cfg, run_dir, args.resume is not None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from policies.actors import UnsupportedEnvError
    from policies.qlearning import ResumeStateError, train

    try:
        cfg, run_dir, resume = resolve_config(args)
        from policies.actors import action_coding, make_env

        probe = make_env(cfg.env_id)  # an unknown id or unusable spaces fail before anything starts
        action_coding(cfg.env_id, probe.observation_space, probe.action_space, cfg.box_bins)
        probe.close()
    except (ValueError, TypeError, UnsupportedEnvError) as exc:
        print(f"robotd train: {exc}", file=sys.stderr)
        return 2
    budget = f"{cfg.minutes:g} min" if cfg.minutes is not None else f"{cfg.total_steps} steps"
    print(f"robotd train: {cfg.arch} on {cfg.env_id}, seed {cfg.seed}, {cfg.num_envs} actor(s), "
          + (f"resumed, to {budget} in all" if resume else budget) + f" -> {run_dir}", flush=True)
    try:
        info = train(cfg, run_dir, resume=resume, progress=not args.no_progress)
    except ResumeStateError as exc:  # learner.pt and replay.npz unreadable or from two checkpoints
        print(f"robotd train: --resume {run_dir}: {exc}", file=sys.stderr)
        return 2
    state = info.state
    print(("interrupted: saved" if info.interrupted else "done") +
          f" after {state.env_steps} env steps, {state.updates} updates, {state.elapsed_s / 60:.1f} min")
    # An env other than the robot's has no task success or tilt: those figures are NaN, left out.
    figures = {k: v for k, v in info.last_eval.items() if not math.isnan(v)}
    if figures:
        print("last eval: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    best = run_dir / "best.safetensors"
    print(f"checkpoints: {run_dir / 'last.safetensors'}" + (f", best {best}" if best.exists() else ""))
    print(f"curve: {run_dir / 'learning_curve.png'}; metrics: {run_dir / 'metrics.csv'}")
    return 0
