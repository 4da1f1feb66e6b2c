"""robotd doctor: a line per check, exit 0 only when a run would start, and each failure names
its fix in one line; against the simulated robot, the board emulator (real pty) and a phone
streaming real UDP. It never moves a servo: the emulator receives no move."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import free_udp_port

from calibration import load_calibration
from robotd.commands.doctor import main, permission_problem
from robotd.daemon.policy_select import SHIPPED_POLICIES
from sim.board_emulator import BoardEmulator
from sim.phone_stream import PhoneStreamer, swaying_torso

REPO = Path(__file__).resolve().parents[1]
CHECKS = ("calibration", "serial", "permission", "board", "policy", "phone")


@pytest.fixture
def phone_port() -> Iterator[int]:
    """A UDP port a phone streams SensaGram to (100 Hz), so only the check under test fails."""
    port = free_udp_port()
    with PhoneStreamer(("127.0.0.1", port), "sensagram", rate_hz=100.0) as phone:
        phone.start(swaying_torso(load_calibration().phone_to_torso))
        yield port


def doctor(capsys: pytest.CaptureFixture[str], *args: str, phone_seconds: float = 0.5) -> tuple[int, list[str]]:
    rc = main([*args, "--phone-seconds", str(phone_seconds)])
    return rc, capsys.readouterr().out.splitlines()


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_against_the_simulated_robot_every_check_passes() -> None:
    proc = subprocess.run([sys.executable, "-m", "robotd.cli", "doctor", "--port", "sim", "--udp",
                           f"127.0.0.1:{free_udp_port()}", "--phone-seconds", "1"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split()[1] for line in lines[:-1]] == list(CHECKS)
    assert all(line.startswith("ok") for line in lines[:-1]) and lines[-1] == "a run would start"
    assert "format sensagram" in lines[-2] and "torso tilt" in lines[-2]


def test_against_the_board_emulator_it_passes_and_moves_nothing(capsys, phone_port: int) -> None:
    with BoardEmulator() as emulator:
        rc, lines = doctor(capsys, "--port", emulator.path, "--udp", f"127.0.0.1:{phone_port}")
        assert emulator.handshakes == 1 and emulator.init_commands == 1
        assert emulator.moves_received == 0 and emulator.framing_errors == 0
    assert rc == 0, lines
    assert "answered the handshake: RT + 0x17" in lines[3]


def test_a_missing_port(capsys, phone_port: int) -> None:
    rc, lines = doctor(capsys, "--port", "/dev/ttyACM-not-here", "--udp", f"127.0.0.1:{phone_port}")
    assert rc == 1
    assert failed(lines) == [next(line for line in lines if "serial" in line)]
    assert "no such port /dev/ttyACM-not-here" in failed(lines)[0] and "USB cable" in failed(lines)[0]
    assert lines[-1] == "a run would not start: fix serial"


def test_a_port_without_permission_names_the_group(tmp_path: Path) -> None:
    """The permission bits decide, as in the kernel (root opens anything, so the check is shown
    for an ordinary user id on a real pty that only its group may open)."""
    with BoardEmulator() as emulator:
        os.chmod(emulator.path, 0o660)
        problem = permission_problem(emulator.path, uid=65534, gids=[65534])
        assert permission_problem(emulator.path, uid=65534, gids=[os.stat(emulator.path).st_gid]) is None
        assert permission_problem(emulator.path, uid=0, gids=[]) is None
    assert problem is not None and "crw-rw----" in problem
    assert "sudo usermod -aG" in problem and "log out and back in" in problem


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any port")
def test_a_port_without_permission_end_to_end(capsys, phone_port: int) -> None:
    with BoardEmulator() as emulator:
        os.chmod(emulator.path, 0)
        rc, lines = doctor(capsys, "--port", emulator.path, "--udp", f"127.0.0.1:{phone_port}")
        assert emulator.handshakes == 0
    assert rc == 1 and len(failed(lines)) == 1 and "permission" in failed(lines)[0], lines


def test_a_board_that_does_not_answer(capsys, phone_port: int) -> None:
    with BoardEmulator(silent=True) as emulator:
        rc, lines = doctor(capsys, "--port", emulator.path, "--udp", f"127.0.0.1:{phone_port}",
                           "--handshake-timeout", "0.3")
    assert rc == 1
    [line] = failed(lines)
    assert line.split()[1] == "board" and "no handshake answer" in line and "powered" in line


def test_a_corrupted_policy_file(capsys, tmp_path: Path, phone_port: int) -> None:
    broken = tmp_path / "balance.safetensors"
    data = SHIPPED_POLICIES["balance"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # cut short, as by an interrupted copy
    with BoardEmulator() as emulator:
        rc, lines = doctor(capsys, "--port", emulator.path, "--udp", f"127.0.0.1:{phone_port}", "--policy", str(broken))
    assert rc == 1
    [line] = failed(lines)
    assert line.split()[1] == "policy" and str(broken) in line and "--policy" in line


def test_no_phone_packets(capsys) -> None:
    port = free_udp_port()
    with BoardEmulator() as emulator:
        rc, lines = doctor(capsys, "--port", emulator.path, "--udp", f"127.0.0.1:{port}", phone_seconds=0.3)
    assert rc == 1
    [line] = failed(lines)
    assert line.split()[1] == "phone" and f"no usable packets on udp 127.0.0.1:{port}" in line
    assert "firewall" in line and f"ufw allow {port}/udp" in line


def test_a_bad_phone_format_is_a_bad_option(capsys) -> None:
    assert main(["--port", "sim", "--phone-format", "morse"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robotd doctor: ") and len(err.splitlines()) == 1 and "Traceback" not in err
