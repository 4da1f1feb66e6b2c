"""``robotd calibrate {center,trim,imu,latency}``: servo centring, trim, IMU zero, latency probe.

Every procedure talks to the board only through :class:`robotd.daemon.safety.Safety` (its operator
``jog``), works against ``--port sim`` as against hardware, ends in the safe pose (also on
Ctrl-C or SIGTERM; ``center`` leaves the servos at 1500 us for fitting the horns) and saves into
the calibration TOML with a timestamped backup of the previous file (``calibration.toml_edit``).
See ``docs/calibration.md``.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from calibration import (
    TEMPLATE_CALIBRATION_PATH,
    Calibration,
    CalibrationError,
    calibration_to_update,
    create_from_template,
    find_calibration,
    load_calibration,
)
from robotd.calibrate.robot import BoardSession, PhoneRecorder, RobotOptions, board_session, run_async
from robotd.commands.extras import require_extra
from robotd.daemon.safety import Safety, TickFlag

__all__ = ["main"]

#: The pulse ``calibrate center`` holds every servo at while its horn is fitted (us).
CENTRE_PULSE_US = 1500


def _udp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 0.0.0.0:5555), got {text!r}")
    return host or "0.0.0.0", int(port)


def _vec3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected three numbers X,Y,Z, got {text!r}")
    return values  # type: ignore[return-value]


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _common(p: argparse.ArgumentParser, *, phone: bool = True, saves: bool = True) -> None:
    p.add_argument("--port", required=True, help="serial port of the board (/dev/ttyACM0), or 'sim'")
    p.add_argument("--calibration", default=None,
                   help="calibration TOML to read and update (default: the robot's calibration in "
                        "$XDG_CONFIG_HOME/robotd/robot.toml or ~/.config/robotd/robot.toml, created from "
                        "the packaged template on first use)")
    if phone:  # trim only jogs servos: it never listens for the phone
        p.add_argument("--udp", type=_udp, default=("0.0.0.0", 5555), metavar="HOST:PORT",
                       help="where to listen for the phone (default 0.0.0.0:5555)")
        p.add_argument("--phone-format", default="auto",
                       help="sensagram | sensorstream | hyperimu:acc,gyro[,...] | sensors2osc | auto (default)")
        p.add_argument("--allow", default=None, metavar="IP[,IP...]|first|any",
                       help="phone address(es) to accept (default first: lock to the first sender)")
    p.add_argument("--baud", type=int, default=115200,
                   help="serial baud rate of the board (default 115200)")
    p.add_argument("--handshake-timeout", type=_positive, default=1.0, metavar="S",
                   help="how long the board has to answer the serial handshake (default 1 s)")
    if saves:
        p.add_argument("--dry-run", action="store_true", help="measure and print, do not save")
    else:  # nothing to save: read the robot's calibration (or the template), create no file
        p.set_defaults(dry_run=True)
    sim = p.add_argument_group("simulated robot (--port sim)")
    sim.add_argument("--sim-seed", type=int, default=0, metavar="N",
                     help="seed of the simulated robot: its phone's noise and packet latencies (default 0)")
    sim.add_argument("--sim-mount-error-deg", type=_vec3, default=None, metavar="X,Y,Z",
                     help="phone mounting error as a rotation vector in the phone frame (degrees)")
    sim.add_argument("--sim-gyro-bias", type=_vec3, default=None, metavar="X,Y,Z", help="phone gyro bias (rad/s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robotd calibrate",
                                     description="Servo trim, IMU zero and the latency probe (docs/calibration.md).")
    sub = parser.add_subparsers(dest="procedure", required=True)
    p = sub.add_parser("center", help="every servo to 1500 us, one at a time, for fitting the horns; saves nothing")
    _common(p, phone=False, saves=False)
    p = sub.add_parser("trim", help="jog each servo from the keyboard; save centre, direction, limits")
    _common(p, phone=False)
    p.add_argument("--step", type=int, default=10, help="initial step in us (1, 2, 5, 10, 20, 50; default 10)")
    p.add_argument("--joint", default=None, help="joint to start with (default the first)")
    p.add_argument("--allow-widen", action="store_true",
                   help="let L/H widen a limit (<= 50 us per press, never beyond 500..2500 us)")
    p = sub.add_parser("imu", help="zero the phone mount tilt and gyro bias with the robot upright and still")
    _common(p)
    p.add_argument("--seconds", type=_positive, default=3.0, help="how long to average (default 3)")
    p.add_argument("--settle", type=float, default=1.0, help="wait after the move to the nominal pose (s)")
    p.add_argument("--no-move", action="store_true", help="command nothing (the robot is held by hand)")
    p.add_argument("--force", action="store_true", help="save even if the robot was moving")
    p = sub.add_parser("latency", help="measure servo dead time and response time from the phone's gyro")
    _common(p)
    p.add_argument("--joints", default="r_ankle_pitch,l_ankle_pitch",
                   help="joints stepped together (default r_ankle_pitch,l_ankle_pitch)")
    p.add_argument("--step-rad", type=float, default=0.1, help="step size (rad, default 0.1)")
    p.add_argument("--reps", type=int, default=8, help="steps, alternately out and back (default 8)")
    p.add_argument("--interval", type=_positive, default=1.0, help="time between steps (s, default 1)")
    p.add_argument("--settle", type=float, default=1.0, help="wait after the move to the nominal pose (s)")
    p.add_argument("--phone-min-latency-ms", type=float, default=None, metavar="MS",
                   help="the phone's known minimum sensor-to-arrival latency, subtracted from the clock "
                        "offset (default 0; under --port sim the simulated transport's 10 ms)")
    p.add_argument("--threshold", type=_positive, default=0.05,
                   help="least gyro change that counts as motion (rad/s; default 0.05, or 5 sigma of the noise)")
    return parser


def _options(args: argparse.Namespace) -> RobotOptions:
    mount = None if args.sim_mount_error_deg is None else tuple(math.radians(v) for v in args.sim_mount_error_deg)
    udp_host, udp_port = getattr(args, "udp", ("0.0.0.0", 5555))
    return RobotOptions(
        port=args.port, calibration_path=args.calibration, udp_host=udp_host, udp_port=udp_port,
        phone_format=getattr(args, "phone_format", "auto"), allow=getattr(args, "allow", None), baudrate=args.baud,
        handshake_timeout_s=args.handshake_timeout, sim_seed=args.sim_seed,
        sim_mount_error_rad=mount, sim_gyro_bias_rad_s=args.sim_gyro_bias)  # type: ignore[arg-type]


def _save(path: str, doc_edit, out: TextIO) -> None:
    from calibration.toml_edit import read_document, save_document

    doc, text = read_document(path)
    result = save_document(path, doc_edit(doc), original_text=text)
    kept = f"; previous file kept as {result.backup_path}" if result.backup_path else ""
    print(f"saved to {path}{kept}", file=out)


# ---------------------------------------------------------------------- procedures


def run_center(args: argparse.Namespace, cal: Calibration, out: TextIO | None = None) -> int:
    """Every servo to 1500 us, one channel at a time (no 17 servos stalling together), and leave
    them there: the board keeps the pulse after we close the port, while the horns go on."""
    out = out or sys.stdout
    with board_session(_options(args), cal, ending=Safety.close) as board:
        for joint in cal.joints:
            result = board.safety.jog({joint.channel: CENTRE_PULSE_US}, alone=True)
            pulse_us = result.pulses_us.get(joint.channel, CENTRE_PULSE_US)
            clamped = f" (its limits stop it at {pulse_us} us: is the horn already on?)" if TickFlag.CLAMPED in result.flags else ""
            print(f"{joint.name:16s} channel {joint.channel:2d} -> {pulse_us} us{clamped}", file=out, flush=True)
            time.sleep(cal.startup_move_ms / 1000.0)  # one servo moving at a time
    print(f"every servo holds {CENTRE_PULSE_US} us: fit each horn with its limb as close as the spline "
          "allows to the pose in docs/build.md, then robotd doctor and robotd calibrate trim", file=out)
    return 0


def _saved_calibration(path: str, loaded: Calibration) -> Calibration:
    """The calibration as it is on disk now (what trim just saved), else the one loaded at start."""
    try:
        return load_calibration(path)
    except (CalibrationError, OSError):
        return loaded


def run_trim(args: argparse.Namespace, cal: Calibration, out: TextIO | None = None,
             keys: list[str] | None = None) -> int:
    out = out or sys.stdout
    from robotd.calibrate.trim import TrimSession, run_keys, run_terminal

    session = TrimSession.from_calibration(cal, step_us=args.step, allow_widen=args.allow_widen,
                                           start_joint=args.joint)

    def ending(safety: Safety) -> None:
        # The way out moves only the joints this session moved, through the calibration as
        # saved: an unsaved centre or direction is never used, and neither is the template's
        # for a joint nobody touched.
        safety.shutdown(_saved_calibration(args.calibration, cal), commanded_only=True)

    with board_session(_options(args), cal, ending=ending) as board:
        if keys is not None:
            run_keys(session, board.safety, args.calibration, keys, say=lambda text: print(text, file=out),
                     dry_run=args.dry_run)
        else:
            run_terminal(session, board.safety, args.calibration, out=out, dry_run=args.dry_run)
    if session.dirty:
        print("quit with unsaved changes (not saved)", file=out)
    return 0


async def _record_imu(board: BoardSession, cal: Calibration, args: argparse.Namespace, out: TextIO):
    from robotd.calibrate.imu import compute_imu_zero

    move_s = 0.0 if args.no_move else board.startup()
    async with PhoneRecorder(board, cal) as rec:
        await rec.wait_for_phone()
        await rec.sleep(move_s + args.settle)
        start = time.monotonic()
        print(f"recording the phone for {args.seconds:g} s: keep the robot upright and still", file=out, flush=True)
        await rec.sleep(args.seconds)
        _, _, accel = rec.series("accel", since_arrival_s=start)
        _, _, gyro = rec.series("gyro", since_arrival_s=start)
    return compute_imu_zero(cal.phone_to_torso, accel, gyro)


def run_imu(args: argparse.Namespace, cal: Calibration, out: TextIO | None = None):
    out = out or sys.stdout
    from calibration.toml_edit import with_imu

    with board_session(_options(args), cal) as board:
        result = run_async(_record_imu(board, cal, args, out))
    for line in result.lines():
        print(line, file=out)
    if args.dry_run:
        print("dry run: not saved", file=out)
    elif not result.still and not args.force:
        print("NOT saved: the robot was moving (use --force to save anyway)", file=out)
        return result, 1
    else:
        _save(args.calibration, lambda doc: with_imu(doc, result.phone_to_torso.tolist(),
                                                     result.gyro_bias_rad_s.tolist()), out)
    return result, 0


async def _probe(board: BoardSession, cal: Calibration, args: argparse.Namespace, out: TextIO):
    from robotd.calibrate.latency import analyse_probe

    names = [n.strip() for n in args.joints.split(",") if n.strip()]
    try:
        joints = [cal.joint(n) for n in names]
    except KeyError as exc:
        raise ValueError(f"unknown joint {exc.args[0]!r}; known: {', '.join(cal.joint_names)}") from None
    nominal = {j.channel: float(cal.nominal_rad[cal.index(j.name)]) for j in joints}
    back = {j.channel: j.angle_to_pulse(nominal[j.channel]) for j in joints}
    out_pose = {j.channel: j.angle_to_pulse(nominal[j.channel] + args.step_rad) for j in joints}
    move_s = board.startup()
    commands: list[tuple[float, int]] = []
    async with PhoneRecorder(board, cal) as rec:
        await rec.wait_for_phone()
        await rec.sleep(move_s + args.settle)
        for i in range(args.reps):
            stepping_out = i % 2 == 0
            result = board.safety.jog(out_pose if stepping_out else back)
            if TickFlag.CLAMPED in result.flags:
                print(f"step {i + 1}: clamped to the joint limits (smaller step)", file=out)
            commands.append((result.tx_done_s, 1 if stepping_out else -1))
            await rec.sleep(args.interval)
        if args.reps % 2:
            board.safety.jog(back)
            await rec.sleep(0.2)
        arrival, phone_t, gyro = rec.series("gyro")
    baseline_s = min(0.3, 0.4 * args.interval)
    min_latency_ms = args.phone_min_latency_ms
    if min_latency_ms is None:
        min_latency_ms = 0.0
        if board.options.is_sim:
            from sim.robot_process import SimRobotConfig

            min_latency_ms = SimRobotConfig().phone_latency_ms[0]
    return analyse_probe(commands, arrival, phone_t, gyro, min_latency_s=min_latency_ms / 1e3, baseline_s=baseline_s,
                         window_s=min(0.6, args.interval - baseline_s), floor_rad_s=args.threshold)


def run_latency(args: argparse.Namespace, cal: Calibration, out: TextIO | None = None):
    out = out or sys.stdout
    from calibration.toml_edit import with_servo_timing

    if args.reps < 2:
        raise ValueError("--reps must be at least 2")
    with board_session(_options(args), cal) as board:
        result = run_async(_probe(board, cal, args, out))
    for line in result.lines():
        print(line, file=out)
    needed = max(2, math.ceil(args.reps / 2))
    if len(result.detected) < needed:
        print(f"NOT saved: only {len(result.detected)} of {args.reps} steps moved the gyro "
              f"(need {needed}); check the phone, the joints and --threshold", file=out)
        return result, 1
    print(f"servo_timing: dead_time_ms = {result.dead_ms:.1f}, response_ms = {result.response_ms:.1f}", file=out)
    if args.dry_run:
        print("dry run: not saved", file=out)
    else:
        _save(args.calibration, lambda doc: with_servo_timing(doc, result.dead_ms, result.response_ms), out)
    return result, 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM raise ``KeyboardInterrupt`` while a procedure runs, whatever
    the process inherited; the board session then sends the safe pose.

    A shell without job control starts a background command with SIGINT ignored, Python keeps
    an inherited SIG_IGN, and so does every child: trim started that way (a script, a test run
    in the background) ignored Ctrl-C, which its cbreak terminal turns into SIGINT, and nothing
    ended it. The daemon's own handlers (``robotd run``) override the inherited state too.
    """
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with _signals_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from robotd.board.link import BoardLinkError

    if args.port == "sim":
        require_extra("sim")  # before the user's calibration file is created from the template
    try:
        # Read the robot's calibration (or the template, before the first calibration) and save
        # into the user's file, never into the installed package, which a reinstall overwrites.
        target = calibration_to_update(args.calibration)
        source = find_calibration(args.calibration)
        cal = load_calibration(source)  # validated before anything is created or started
        if not args.dry_run:
            if create_from_template(target):
                print(f"robotd calibrate: created {target} from the packaged template "
                      f"{TEMPLATE_CALIBRATION_PATH}; calibration is saved there", file=sys.stderr)
            source = target
        args.calibration = str(source)
        print(f"robotd calibrate: calibration {source}", file=sys.stderr)
        if args.procedure == "center":
            return run_center(args, cal)
        if args.procedure == "trim":
            return run_trim(args, cal)
        if args.procedure == "imu":
            return run_imu(args, cal)[1]
        return run_latency(args, cal)[1]
    except KeyboardInterrupt:
        ending = "nothing more sent" if args.procedure == "center" else "safe pose sent; unsaved changes discarded"
        print(f"\ninterrupted: {ending}", file=sys.stderr)
        return 130
    except (CalibrationError, BoardLinkError, RuntimeError, ValueError, OSError) as exc:
        print(f"robotd calibrate {args.procedure}: {exc}", file=sys.stderr)
        return 2
