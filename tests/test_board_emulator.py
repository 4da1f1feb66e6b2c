"""The board emulator on its own, driven by raw writes to its pty (independent of robotd)."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest

from sim.board_emulator import BoardEmulator, ReceivedMove, main


@pytest.fixture
def board():
    with BoardEmulator() as emulator:
        fd = os.open(emulator.path, os.O_RDWR | os.O_NOCTTY)
        try:
            yield emulator, fd
        finally:
            os.close(fd)


def read_available(fd: int, timeout_s: float = 1.0, want: int = 1) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < want and time.monotonic() < deadline:
        if select.select([fd], [], [], deadline - time.monotonic())[0]:
            data += os.read(fd, 256)
    return data


def test_moves_before_handshake_are_ignored(board) -> None:
    emulator, fd = board
    os.write(fd, b"#1P1500\r\n")
    assert emulator.wait_for(lambda e: e.moves_ignored == 1, 1.0)
    assert emulator.moves_received == 0 and not emulator.latest_pulse_us


def test_handshake_then_moves_are_recorded_and_acknowledged(board) -> None:
    emulator, fd = board
    os.write(fd, b"~RT")
    assert read_available(fd, want=3) == b"RT\x17"
    os.write(fd, b"~OL#1P1000#2P666T1000\r\n")
    assert emulator.wait_for(lambda e: e.moves_received == 1, 1.0)
    assert read_available(fd, want=4) == b"OK\r\n"
    move = emulator.moves[-1]
    assert move.pulses_us == {1: 1000, 2: 666} and move.time_ms == 1000 and move.d_field is None
    os.write(fd, b"OL#3P2000T1000D100\r\n~ST")
    assert emulator.wait_for(lambda e: e.stops == 1, 1.0)
    assert emulator.moves[-1].d_field == 100
    assert emulator.latest_pulse_us == {1: 1000, 2: 666, 3: 2000}
    assert (emulator.init_commands, emulator.handshakes, emulator.framing_errors) == (2, 1, 0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"#1P15#2P1600\r\n", "out of range"),  # half a command followed by another
        (b"#1P1500#1P1600\r\n", "twice"),
        (b"#33P1500\r\n", "out of range"),
        (b"#0P1500\r\n", "out of range"),
        (b"#1P1500\n", "malformed"),
        (b"#1P1500~RT\r\n", "malformed"),
        (b"hello\r\n", "not a command"),
        (b"~XX", "unknown"),
    ],
)
def test_framing_errors_are_counted_and_kept(board, data: bytes, reason: str) -> None:
    emulator, fd = board
    os.write(fd, b"~RT" + data + b"#5P1500\r\n")
    assert emulator.wait_for(lambda e: e.moves_received == 1, 1.0), emulator.bad_frames
    assert emulator.framing_errors == 1
    assert reason in emulator.bad_frames[0].reason
    assert emulator.moves[-1].pulses_us == {5: 1500}


def test_silent_board_never_answers() -> None:
    with BoardEmulator(silent=True) as emulator:
        fd = os.open(emulator.path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"~RT#1P1500\r\n")
            assert emulator.wait_for(lambda e: e.moves_received == 1, 1.0)
            assert read_available(fd, timeout_s=0.2) == b""
        finally:
            os.close(fd)


def test_slow_board_reads_at_its_rate() -> None:
    with BoardEmulator(read_rate_bytes_s=1000) as emulator:
        fd = os.open(emulator.path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"x" * 2000)
            time.sleep(0.5)
            assert 300 <= emulator.bytes_received <= 700
        finally:
            os.close(fd)


def test_on_move_callback_and_unplug_replug(tmp_path: Path) -> None:
    seen: list[ReceivedMove] = []
    link = tmp_path / "board"
    with BoardEmulator(link_path=link, on_move=seen.append) as emulator:
        assert os.readlink(link) == emulator.path
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"~RT#1P1500\r\n")
        assert emulator.wait_for(lambda e: e.moves_received == 1, 1.0)
        assert [m.pulses_us for m in seen] == [{1: 1500}]
        emulator.unplug()
        assert not link.exists() and not emulator.plugged
        with pytest.raises(OSError):
            os.write(fd, b"#1P1600\r\n")
        os.close(fd)
        emulator.replug()
        assert os.readlink(link) == emulator.path and not emulator.initialised
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"#1P1700\r\n~RT#1P1800\r\n")
        assert emulator.wait_for(lambda e: e.moves_received == 2, 1.0)
        os.close(fd)
        assert emulator.moves_ignored == 1 and emulator.latest_pulse_us == {1: 1800}
    assert not link.exists()


def test_cli_prints_path_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    import signal
    import threading

    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    assert main(["--summary-s", "0.1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("board emulator on /dev/pts/")
    assert "moves=0" in out
