"""``robotd rollout``: write a GIF/MP4 of any policy in the simulator.

    robotd rollout --policy pd --out docs/img/rollout_pd.gif
    robotd rollout --policy policies/trained/balance.safetensors --string free --seconds 10

The policy is loaded exactly as ``robotd run`` loads it (a built-in name or a checkpoint),
so what the video shows is what the daemon would run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from robotd.cli import existing_output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robotd rollout", description="Write a GIF/MP4 of any policy in the simulator, loaded exactly as "
                                           "robotd run loads it.")
    from robotd.daemon.policy_select import DEFAULT_POLICY

    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"balance | pd | hold | checkpoint path (default {DEFAULT_POLICY})")
    parser.add_argument("--out", type=Path, default=Path("rollout.gif"),
                        help="output .gif or .mp4 (MP4 needs: pip install imageio-ffmpeg); default rollout.gif")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the video in simulated s (default 5)")
    parser.add_argument("--fps", type=int, default=25, help="frames per second of the video (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated episode (default 0)")
    parser.add_argument("--string", default="supported",
                        help="string length: 'supported' (carries the robot), 'free' (slack) or metres")
    parser.add_argument("--size", default="240x320", help="frame HEIGHTxWIDTH in pixels (default 240x320)")
    parser.add_argument("--calibration", default=None, help="calibration TOML (default: the robot's calibration)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    refused = existing_output(args.out, "--out", args.force)
    if refused:
        print(f"robotd rollout: {refused}", file=sys.stderr)
        return 2
    os.environ.setdefault("MUJOCO_GL", "egl")

    from calibration import CalibrationError, load_calibration
    from robotd.daemon.policy_select import PolicyLoadError, load_policy
    from sim.env import BipedBalanceEnv, EnvConfig
    from sim.render import check_video_writer, write_rollout

    try:
        check_video_writer(args.out)  # before minutes of rendering, not after
        cal = load_calibration(args.calibration)
        policy = load_policy(args.policy, cal)
        height, width = (int(v) for v in args.size.lower().split("x"))
    except (CalibrationError, PolicyLoadError, ValueError) as exc:
        print(f"robotd rollout: {exc}", file=sys.stderr)
        return 2
    env = BipedBalanceEnv(EnvConfig(obs_spec=policy.spec), calibration=cal, render_mode="rgb_array",
                          render_size=(height, width))
    if args.string == "free":
        env.set_string_length(env.biped.free_string_length_m)
    elif args.string == "supported":
        env.set_string_length(env.biped.supported_string_length_m)
    else:
        env.set_string_length(float(args.string))
    path = write_rollout(env, policy.act, args.out, seconds=args.seconds, fps=args.fps, seed=args.seed,
                         reset_fn=policy.reset, label=policy.name)
    env.close()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): policy {policy.identity}, string {args.string}")
    return 0
