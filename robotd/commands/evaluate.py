"""``robotd eval``: a policy on the fixed, seeded episodes of the balance task (or another task or env).

    robotd eval --sim                            # the default policy, 30 episodes from seed 1000
    robotd eval pd --sim --episodes 100 --json   # the report as one JSON object on the last line
    robotd eval runs/balance/best.safetensors --sim --gif best.gif
    robotd eval runs/cartpole/best.safetensors --env CartPole-v1
    robotd eval pd --sim --task undelayed-push --episodes 100   # the learner's positive control
    robotd eval hold --sim --task stay-up --episodes 100        # pushed for 26 s: standing, knock-downs, get-ups

A checkpoint runs through the torch-free step runtime, exactly as the daemon runs it. Episode
``i`` is seed ``--seed + i``, so reports of different policies compare the same episodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from policies.evaluation import EVAL_SEED
from robotd.cli import doc_parser
from sim.balance_task import TASK_ENV_IDS


def _parser() -> argparse.ArgumentParser:
    from robotd.daemon.policy_select import DEFAULT_POLICY

    p = doc_parser("robotd eval", __doc__)
    p.add_argument("policy", nargs="?", default=DEFAULT_POLICY,
                   help=f"balance | pd | pd:kp_hip=0.8,... (other PD gains) | hold | a checkpoint path "
                        f"(default {DEFAULT_POLICY})")
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--sim", action="store_true", help="the balance task (string let out, pushes at 4/6/8 s)")
    task.add_argument("--env", metavar="ENV_ID", help="another gymnasium env (a checkpoint trained there): mean return")
    p.add_argument("--task", choices=sorted(TASK_ENV_IDS), default="balance",
                   help="with --sim: the balance task; undelayed-push, the learner's positive control "
                        "(no dead time, no phone latency, every push 7.5 N); or stay-up (30 s, a push of up to "
                        "12 N every 2-4 s from t = 4 s; adds the time standing, knock-downs and get-ups)")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default 30 on --sim, 10 on --env)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"seed of the first episode (default {EVAL_SEED})")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.add_argument("--gif", type=Path, default=None, help="also write the first episode as a GIF (--sim only)")
    p.add_argument("--calibration", default=None,
                   help="calibration TOML (default: the robot's, ~/.config/robotd/robot.toml, else the packaged template)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        print("robotd eval: --episodes must be >= 1", file=sys.stderr)
        return 2
    if args.env is not None:
        return _eval_env(args)
    from tqdm import tqdm

    from calibration import CalibrationError, load_calibration
    from policies.evaluation import evaluate_policy
    from robotd.daemon.policy_select import PolicyLoadError, load_policy

    try:
        cal = load_calibration(args.calibration)
        policy = load_policy(args.policy, cal, option="")  # the policy is positional here
    except (CalibrationError, PolicyLoadError) as exc:
        print(f"robotd eval: {exc}", file=sys.stderr)
        return 2
    episodes = args.episodes or 30
    from sim.env import TASK_CONFIGS

    env_kwargs = {"calibration": cal, "config": TASK_CONFIGS[args.task](obs_spec=policy.spec)}
    with tqdm(total=episodes, desc=f"eval {policy.identity}", unit="episode", file=sys.stderr) as bar:
        report = evaluate_policy(policy, episodes, args.seed, TASK_ENV_IDS[args.task][0], env_kwargs,
                                 progress=lambda n: bar.update(n - bar.n))
    print("\n".join(report.lines()))
    if args.gif is not None:
        from sim.env import make_balance_task
        from sim.render import write_rollout

        env = make_balance_task(render_mode="rgb_array", **env_kwargs)
        path = write_rollout(env, policy.act, args.gif, seconds=env.config.episode_s, seed=args.seed,
                             reset_fn=policy.reset)
        env.close()
        print(f"wrote {path}")
    if args.json:
        print(json.dumps(report.to_dict()))
    return 0


def _eval_env(args: argparse.Namespace) -> int:
    from policies.actors import UnsupportedEnvError
    from policies.checkpoint import CheckpointError
    from policies.evaluation import evaluate_on_env
    from policies.runtime import load_runtime
    from robotd.daemon.policy_select import is_robot_policy_name

    if args.gif is not None:
        print("robotd eval: --gif works with --sim only", file=sys.stderr)
        return 2
    if is_robot_policy_name(args.policy):
        print(f"robotd eval: {args.policy} is a robot policy (robotd eval {args.policy} --sim); --env {args.env} "
              f"needs a checkpoint trained there (robotd train --env {args.env})", file=sys.stderr)
        return 2
    try:
        runtime = load_runtime(args.policy)
        trained_on = runtime.meta.env_id
        if trained_on != args.env:
            raise CheckpointError(f"{args.policy} was trained on {trained_on or 'the robot'}, not {args.env}")
        report = evaluate_on_env(runtime, args.env, args.episodes or 10, args.seed)
    except (CheckpointError, UnsupportedEnvError, OSError) as exc:
        print(f"robotd eval: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    if args.json:
        print(json.dumps(report.to_dict()))
    return 0
