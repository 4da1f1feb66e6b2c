"""The ``robotd`` command: run, board-emulator, replay, rollout, export, calibrate, doctor, train, eval, tune.

Each sub-command imports what it needs when it runs, so ``robotd run`` never loads torch
or MuJoCo for a real robot, and ``robotd --help`` is instant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A sub-command's parser whose help is its module docstring (first line, then the rest as is),
    without the docstring's rST literal markup (``x`` reads as x on a terminal)."""
    lines = doc.replace("``", "").splitlines()
    return argparse.ArgumentParser(prog=prog, description=lines[0], epilog="\n".join(lines[1:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def existing_output(path: os.PathLike | str | None, flag: str, force: bool) -> str | None:
    """Why writing ``path`` (given as ``flag``) is refused, or None: an existing file is replaced
    only with ``--force``, as the latency log is never overwritten (a plot or export can be an
    hour's result, and a typo in the name should not cost it)."""
    if path is None or force or not os.path.lexists(path):
        return None
    return f"{flag} {path}: already exists (--force replaces it)"


def _udp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 0.0.0.0:5555), got {text!r}")
    return host or "0.0.0.0", int(port)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _foxglove_address(text: str) -> tuple[str, int]:
    """HOST:PORT, :PORT or nothing; the host defaults to loopback (a viewer elsewhere must ask for it)."""
    if not text:
        text = "127.0.0.1:8765"
    host, port = _udp(text if not text.startswith(":") else "127.0.0.1" + text)
    return host, port


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon against a servo board (or --port sim)",
                       description="Run the daemon: the phone's IMU over UDP, the policy, the safety layer and the "
                                   "servo board at a fixed rate, with a latency log; --port sim runs it against "
                                   "the simulated robot. Ends in the safe pose (duration, Ctrl-C, SIGTERM).")
    p.add_argument("--port", required=True, help="serial port of the board (/dev/ttyACM0), or 'sim'")
    p.add_argument("--udp", type=_udp, default=("0.0.0.0", 5555), metavar="HOST:PORT",
                   help="where to listen for the phone (default 0.0.0.0:5555; checked before the board is "
                        "opened; under --port sim the simulated phone sends to 127.0.0.1 at this port)")
    p.add_argument("--phone-format", default="auto",
                   help="sensagram | sensorstream | hyperimu:acc,gyro[,...] | sensors2osc | auto (default)")
    p.add_argument("--allow", default=None, metavar="IP[,IP...]|first|any",
                   help="phone address(es) allowed to drive the robot (default 'first': lock to the first "
                        "sender of a valid packet, named in the health line and the log; 'any': anyone "
                        "on the network may)")
    from robotd.daemon.policy_select import DEFAULT_POLICY

    p.add_argument("--policy", default=DEFAULT_POLICY,
                   help="balance (the shipped learned policy) | pd | pd:kp_hip=0.8,kd_hip=0.02,... (other PD "
                        f"gains) | hold | path to a policy checkpoint (default {DEFAULT_POLICY})")
    p.add_argument("--rate", type=_positive, default=50.0, help="control rate in Hz (default 50)")
    p.add_argument("--log", default=None, metavar="PATH",
                   help="latency log (JSON Lines) to create; a name ending in .zst is zstd-compressed; an "
                        "existing file is never overwritten (default: a new latency-YYYYmmdd-HHMMSS.log in "
                        "the current folder; '' for no log)")
    p.add_argument("--log-max-mb", type=_positive, default=None, metavar="MB",
                   help="rotate the log into numbered files (run.1.log.zst, ...) past this size; none of "
                        "them may exist yet")
    p.add_argument("--foxglove", type=_foxglove_address, nargs="?", const="", default=None, metavar="HOST:PORT",
                   help="stream live to Foxglove over WebSocket (default 127.0.0.1:8765; [foxglove] extra)")
    p.add_argument("--duration", type=_positive, default=None, help="stop after this many seconds")
    p.add_argument("--calibration", default=None,
                   help="calibration TOML (default: the robot's, $XDG_CONFIG_HOME/robotd/robot.toml or "
                        "~/.config/robotd/robot.toml, as robotd calibrate saves it; else the packaged template)")
    p.add_argument("--stale-timeout-ms", type=_positive, default=None,
                   help="phone data older than this makes the robot hold still (default from calibration, 150)")
    p.add_argument("--rearm-after", type=float, default=0.0, metavar="S",
                   help="after a fall, re-arm automatically once the tilt has been back inside the fall limit "
                        "for S seconds (0: only on SIGUSR1)")
    p.add_argument("--handshake-timeout", type=_positive, default=1.0, metavar="S",
                   help="how long the board has to answer the serial handshake before the run gives up "
                        "(default 1 s)")
    p.add_argument("--baud", type=int, default=115200,
                   help="serial baud rate of the board (default 115200, the rtrobot board's rate)")
    sim = p.add_argument_group("simulated robot (--port sim)")
    sim.add_argument("--sim-seed", type=int, default=None, metavar="N",
                     help="seed of the simulated robot: its phone's imperfections, packet latencies and the "
                          "random pushes (default 0; the same seed gives the same pushes at the same times)")
    sim.add_argument("--sim-report", default=None, metavar="PATH",
                     help="also write the simulator's ground truth (time upright, tilt, falls, pushes, string "
                          "tension, the stay-up task's figures, ...) to PATH as JSON")
    from sim.balance_task import SIM_RUN_PUSHES

    sim.add_argument("--sim-task", choices=sorted(SIM_RUN_PUSHES), default=None,
                     help="whose pushes: balance (default: up to 8 N every 2.5-3.5 s) or stay-up (the stay-up "
                          "task's: up to 12 N every 2-4 s from t = 4 s; also prints its standing fraction, "
                          "knock-downs and get-ups)")


def cmd_run(args: argparse.Namespace) -> int:
    from calibration import CalibrationError, find_calibration
    from robotd.board.link import BoardHandshakeError
    from robotd.daemon.run import RunConfig, prepare_run, run_daemon, write_summary
    from robotd.logs.log_path import default_log_path
    from robotd.daemon.policy_select import PolicyLoadError

    if args.port != "sim" and (args.sim_seed, args.sim_report, args.sim_task) != (None, None, None):
        print("robotd run: --sim-seed, --sim-report and --sim-task only apply to --port sim", file=sys.stderr)
        return 2
    log_path = str(default_log_path()) if args.log is None else (args.log or None)
    cfg = RunConfig(
        port=args.port, udp_host=args.udp[0], udp_port=args.udp[1], phone_format=args.phone_format,
        allow=args.allow, policy=args.policy,
        rate_hz=args.rate, log_path=log_path, log_max_mb=args.log_max_mb, duration_s=args.duration,
        foxglove=args.foxglove,
        calibration_path=str(find_calibration(args.calibration)), stale_timeout_ms=args.stale_timeout_ms,
        rearm_after_s=args.rearm_after, handshake_timeout_s=args.handshake_timeout, baudrate=args.baud,
    )
    try:
        prepared = prepare_run(cfg)  # every file checked before a port opens or a process starts
        if cfg.port == "sim":
            from robotd.commands.simrun import run_with_simulated_robot

            summary = run_with_simulated_robot(cfg, prepared, seed=args.sim_seed or 0,  # prints both summaries
                                               report_path=args.sim_report, task=args.sim_task or "balance")
        else:
            summary = asyncio.run(run_daemon(cfg, prepared=prepared))
            write_summary(summary, sys.stdout)
    except (CalibrationError, BoardHandshakeError, PolicyLoadError, ValueError, OSError) as exc:
        print(f"robotd run: {exc}", file=sys.stderr)
        return 2
    if cfg.log_path:
        print(f"latency log: {cfg.log_path} (robotd replay {cfg.log_path} --plot latency.png)")
    if summary.stopped_early:
        print(f"robotd run: {summary.stopped_early}", file=sys.stderr)
        return 1
    return 0


#: Exit status of a command whose reader went away (``robotd replay LOG | head``), as for a
#: tool ended by SIGPIPE.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a reader that closes the pipe early ends it quietly, and a module of
    an extra the base install leaves out is named with the extra to install, not a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        status = _dispatch(argv)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at exit
        return status
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except ModuleNotFoundError as exc:
        from robotd.commands.extras import missing_extra_message

        message = missing_extra_message(exc, argv[0] if argv else "")
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    # Sub-commands that own their argument parsing get the rest of the line untouched.
    passthrough = {
        "board-emulator": ("sim.board_emulator", "main"),
        "replay": ("robotd.commands.replay", "main"),
        "rollout": ("robotd.commands.rollout", "main"),
        "export": ("robotd.commands.export", "main"),
        "calibrate": ("robotd.calibrate", "main"),
        "doctor": ("robotd.commands.doctor", "main"),
        "train": ("robotd.commands.train", "main"),
        "eval": ("robotd.commands.evaluate", "main"),
        "tune": ("robotd.commands.tune", "main"),
        "stance": ("robotd.commands.stance", "main"),
    }
    if argv and argv[0] in passthrough:
        import importlib

        module, func = passthrough[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)

    parser = argparse.ArgumentParser(
        prog="robotd", description="Control daemon for a phone-IMU, MG996R-servo biped (robotd SUBCOMMAND --help).")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    for name, help_text in (
        ("board-emulator", "a servo-board emulator on a pseudo-terminal"),
        ("replay", "report and plots from a latency log"),
        ("rollout", "write a GIF/MP4 of a policy in the simulator"),
        ("export", "export a policy checkpoint (--onnx)"),
        ("calibrate", "servo centring, trim, IMU zero, latency probe (center|trim|imu|latency)"),
        ("doctor", "check serial port, permission, board, calibration, policy and phone; moves nothing"),
        ("train", "train a balance policy in the simulator (--sim) or on a gymnasium env (--env)"),
        ("eval", "a policy on the seeded episodes of the balance task (--sim) or a gymnasium env"),
        ("tune", "Bayesian tuning: the learner in the simulator (--sim), PD gains on the robot (--port)"),
        ("stance", "find the stance a balance policy trains around (Bayesian optimisation in the simulator)"),
    ):
        sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
