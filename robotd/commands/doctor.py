"""``robotd doctor``: what stands between this machine and a run, one line per check; moves nothing.

The checks, in the order a run needs them: the calibration file, the serial ports the system
knows (``/dev/serial/by-id``), permission to open the board's port (the ``dialout`` group), the
board's answer to the handshake, the policy file, and the phone's packets for a few seconds
(format, rate, sender, packet age, and the torso tilt the mount gives). Each line starts with
``ok`` or ``FAIL``; a failing line says what to do. The board hears the handshake (``~RT`` and
``~OL``) and nothing else: no servo is ever commanded.

Exit status 0 only when every check passes, i.e. ``robotd run`` with the same options would
start and have a phone to follow; 1 otherwise; 2 for bad options. ``--port sim`` checks the
simulated robot (its board emulator and its phone) the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import math
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from calibration import Calibration, CalibrationError, find_calibration, load_calibration

#: Where udev names USB serial devices by their identity; stable across replugging.
SERIAL_BY_ID = Path("/dev/serial/by-id")
#: Torso tilt above which an upright robot's phone mount wants ``robotd calibrate imu`` (deg).
MOUNT_TILT_WARN_DEG = 3.0


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether a run could go on, what was found or the fix."""

    name: str
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:12s} {self.text}"


# ---------------------------------------------------------------------- the checks


def check_calibration(path: str | None) -> tuple[Check, Calibration | None]:
    """The calibration a run would read, found and valid."""
    try:
        found = find_calibration(path)
        cal = load_calibration(found)
    except (CalibrationError, OSError) as exc:
        return Check("calibration", False, f"{exc}; fix the file or name another with --calibration"), None
    from calibration import TEMPLATE_CALIBRATION_PATH

    template = Path(found).resolve() == Path(TEMPLATE_CALIBRATION_PATH).resolve()
    note = " (the packaged template: this robot is not trimmed yet, robotd calibrate trim)" if template else ""
    return Check("calibration", True, f"{found}{note}"), cal


def check_ports(port: str | None, by_id: Path = SERIAL_BY_ID) -> tuple[Check, str | None]:
    """The serial ports udev names, and the one the run would open (``--port``, or the only one)."""
    entries = sorted(by_id.glob("*")) if by_id.is_dir() else []
    found = ", ".join(f"{e} -> {os.path.realpath(e)}" for e in entries) or f"nothing in {by_id}"
    if port is None:
        if len(entries) == 1:
            return Check("serial", True, f"using the only one: {found}"), str(entries[0])
        hint = "is the board's USB cable in (a data cable, not a charge-only one)?" if not entries else \
            "give the board's with --port"
        return Check("serial", False, f"{found}: {hint}"), None
    if not os.path.exists(port):
        hint = f"the board is probably one of these: --port PATH ({found})" if entries else \
            f"{found}: is the board's USB cable in? `sudo dmesg -w` while plugging it names it"
        return Check("serial", False, f"no such port {port}; {hint}"), None
    return Check("serial", True, f"{port} exists; {found}"), port


def permission_problem(path: str, uid: int, gids: Iterable[int]) -> str | None:
    """Why ``uid`` with groups ``gids`` may not open ``path`` for reading and writing, else None.

    From the permission bits, as the kernel decides (root may open anything), so the answer
    names the group that would let the user in: ``dialout`` for serial ports on most Linux
    distributions.
    """
    st = os.stat(path)
    if uid == 0:
        return None
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 0o6
    elif st.st_gid in set(gids):
        bits = (st.st_mode >> 3) & 0o6
    else:
        bits = st.st_mode & 0o6
    if bits == 0o6:
        return None
    if st.st_uid == uid:
        return f"{path} is {stat.filemode(st.st_mode)} and yours: chmod u+rw {path}"
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return (f"{path} is {stat.filemode(st.st_mode)} group {group} and you are not in it: "
            f"sudo usermod -aG {group} $USER, then log out and back in (docs/build.md)")


def check_permission(port: str) -> Check:
    problem = permission_problem(port, os.geteuid(), [os.getegid(), *os.getgroups()])
    return Check("permission", problem is None, problem or f"{port} is readable and writable")


def check_board(port: str, baudrate: int, handshake_timeout_s: float) -> Check:
    """Open the port and do the handshake only (no move); the board's reply byte and time."""
    from robotd.board.link import BoardHandshakeError, BoardLinkError, SerialLink

    answer: dict[str, object] = {}
    link = SerialLink(port, baudrate=baudrate, handshake_timeout_s=handshake_timeout_s,
                      on_event=lambda name, **details: answer.update(details) if name == "handshake" else None)
    try:
        byte = link.open()
    except BoardHandshakeError as exc:
        return Check("board", False, f"{exc}; is the board powered (its USB side), and is this its port? "
                                     "robotd doctor without --port lists the ports")
    except BoardLinkError as exc:
        return Check("board", False, str(exc))
    finally:
        link.close()
    return Check("board", True, f"answered the handshake: RT + 0x{byte:02x} in {answer.get('handshake_ms')} ms, "
                                f"then {link.ol_command.decode()} sent")


def check_policy(policy: str, cal: Calibration | None) -> Check:
    """The policy a run would load, verified the way the run loads it."""
    from robotd.daemon.policy_select import PolicyLoadError, load_policy, policy_mismatches

    if cal is None:
        return Check("policy", False, "not checked: it needs a valid calibration")
    try:
        loaded = load_policy(policy, cal, warn=False)
    except PolicyLoadError as exc:
        return Check("policy", False, f"{exc}; name another with --policy (balance, pd, hold or a checkpoint)")
    mismatches = policy_mismatches(loaded, cal)
    note = f" (the run will warn: {'; '.join(mismatches)})" if mismatches else ""
    return Check("policy", True, f"{loaded.identity}{note}")


async def _listen(receiver, seconds: float) -> None:
    await receiver.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await receiver.stop()


def check_phone(cal: Calibration | None, host: str, port: int, phone_format: str, allow: str | None,
                seconds: float) -> Check:
    """Listen for ``seconds`` as the daemon does: packets, rate, sender, age and the torso tilt."""
    from robotd.phone.fusion import Fusion
    from robotd.phone.formats import make_parser
    from robotd.phone.receiver import PhoneReceiver, describe_allow, parse_allow
    from sim.observation import gravity_in_torso, tilt_rad

    if cal is None:
        return Check("phone", False, "not checked: it needs a valid calibration")
    receiver = PhoneReceiver(make_parser(phone_format), Fusion(cal), host=host, port=port, allow=parse_allow(allow))
    try:
        asyncio.run(_listen(receiver, seconds))
    except OSError as exc:
        return Check("phone", False, f"cannot listen on udp {host}:{port}: {exc}; is a robotd run already using it?")
    c = receiver.counters
    snapshot = receiver.snapshot
    if c.accepted == 0 or snapshot is None:
        why = []
        if c.foreign_sender:
            why.append(f"{c.foreign_sender} from senders --allow {allow} refuses")
        if c.rejected - c.foreign_sender > 0:
            why.append(f"{c.rejected - c.foreign_sender} not readable as {receiver.parser.name}: --phone-format")
        detail = f" ({'; '.join(why)})" if why else ""
        return Check("phone", False, f"no usable packets on udp {host}:{port} in {seconds:g} s{detail}; is the app "
                                     f"streaming to this machine's address and port {port}, and is the firewall "
                                     f"open (sudo ufw allow {port}/udp)? docs/phone.md")
    age_ms = receiver.latest_age_ms(time.monotonic())
    tilt = ""
    if snapshot.quat_wxyz is not None:
        tilt_deg = math.degrees(tilt_rad(gravity_in_torso(snapshot.quat_wxyz)))
        hint = " (robot upright and still? then run robotd calibrate imu)" if tilt_deg > MOUNT_TILT_WARN_DEG else ""
        tilt = f", torso tilt {tilt_deg:.1f} deg{hint}"
    return Check("phone", True, f"{c.accepted} packets in {seconds:g} s ({c.accepted / seconds:.0f}/s), format "
                                f"{snapshot.format}, from {describe_allow(receiver.allow, receiver.locked_sender)}, "
                                f"age {age_ms:.0f} ms{tilt}")


# ---------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    from robotd.cli import _positive, _udp  # the same option types as robotd run
    from robotd.daemon.policy_select import DEFAULT_POLICY

    p = argparse.ArgumentParser(prog="robotd doctor", description=__doc__.splitlines()[0],
                                epilog="The same options as robotd run; see docs/build.md.")
    p.add_argument("--port", default=None,
                   help="the board's serial port, or 'sim' (default: the only one in /dev/serial/by-id)")
    p.add_argument("--calibration", default=None, help="calibration TOML (default: as robotd run finds it)")
    p.add_argument("--policy", default=DEFAULT_POLICY, help=f"the policy a run would load (default {DEFAULT_POLICY})")
    p.add_argument("--udp", type=_udp, default=("0.0.0.0", 5555), metavar="HOST:PORT",
                   help="where to listen for the phone (default 0.0.0.0:5555)")
    p.add_argument("--phone-format", default="auto",
                   help="sensagram | sensorstream | hyperimu:acc,gyro[,...] | sensors2osc | auto (default)")
    p.add_argument("--allow", default=None, metavar="IP[,IP...]|first|any", help="phone address(es) to accept")
    p.add_argument("--phone-seconds", type=_positive, default=3.0, metavar="S",
                   help="how long to listen for the phone (default 3)")
    p.add_argument("--baud", type=int, default=115200, help="serial baud rate (default 115200)")
    p.add_argument("--handshake-timeout", type=_positive, default=1.0, metavar="S",
                   help="how long the board has to answer (default 1 s)")
    return p


def run_checks(args: argparse.Namespace) -> list[Check]:
    """Every check, in order; the simulated robot (``--port sim``) runs only while they do."""
    checks: list[Check] = []
    cal_check, cal = check_calibration(args.calibration)
    checks.append(cal_check)
    host, udp_port = args.udp
    allow, phone_format, sim = args.allow, args.phone_format, None
    port: str | None = args.port
    if port == "sim" and cal is not None:
        from robotd.commands.simrun import SIM_UDP_HOST, start_simulated_robot

        # Held still like for calibration: a taut string and no pushes.
        sim, phone_format = start_simulated_robot(udp_port, phone_format, str(cal.path), sys.stderr, "doctor",
                                                  string_slack_m=0.0, pushes=None)
        host, allow, port = SIM_UDP_HOST, allow or SIM_UDP_HOST, sim.board_path
    try:
        if args.port == "sim" and sim is None:
            checks.append(Check("serial", False, "not checked: the simulated robot needs a valid calibration"))
        else:
            serial_check, port = check_ports(port)
            checks.append(serial_check)
        if port is not None:
            checks.append(check_permission(port))
            if checks[-1].ok:
                checks.append(check_board(port, args.baud, args.handshake_timeout))
        checks.append(check_policy(args.policy, cal))
        checks.append(check_phone(cal, host, udp_port, phone_format, allow, args.phone_seconds))
    finally:
        if sim is not None:
            sim.kill()
    return checks


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from robotd.phone.formats import make_parser

        make_parser(args.phone_format)  # a bad format is a bad option, not a failed check
    except ValueError as exc:
        print(f"robotd doctor: {exc}", file=sys.stderr)
        return 2
    checks = run_checks(args)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c.name for c in checks if not c.ok]
    print(f"{'a run would start' if not failed else 'a run would not start: fix ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
