"""SerialLink against the board emulator on a real pty: handshake, whole frames, loss, reconnect."""

from __future__ import annotations

import gc
import logging
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from robotd.board.link import BoardHandshakeError, BoardLinkError, SerialLink
from robotd.board.protocol import encode_move
from sim.board_emulator import BoardEmulator

CHANNELS = range(1, 18)
REPO_ROOT = Path(__file__).resolve().parents[1]


class Events(list):
    """Records on_event calls as (name, details)."""

    def __call__(self, name: str, **details: object) -> None:
        self.append((name, details))

    def names(self) -> list[str]:
        return [name for name, _ in self]


def frame(step: int) -> tuple[dict[int, int], bytes]:
    pulses_us = {ch: 1000 + (step * 7 + ch) % 1000 for ch in CHANNELS}
    return pulses_us, encode_move(pulses_us, time_ms=20)


def poll_until(link: SerialLink, condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        link.poll()
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_handshake_logs_the_byte_and_sends_init(caplog: pytest.LogCaptureFixture) -> None:
    events = Events()
    with BoardEmulator() as board, caplog.at_level(logging.INFO, logger="robotd.board.link"):
        with SerialLink(board.path, on_event=events) as link:
            assert link.counters.handshake_byte == 0x17
            assert board.wait_for(lambda b: b.init_commands == 1, 1.0)
        assert events.names() == ["handshake"] and events[0][1]["byte"] == 0x17
        assert "RT + 0x17" in caplog.text


def test_short_init_spelling_is_accepted() -> None:
    with BoardEmulator() as board, SerialLink(board.path, ol_command="OL"):
        assert board.wait_for(lambda b: b.init_commands == 1, 1.0)
    with pytest.raises(ValueError):
        SerialLink(board.path, ol_command="XX")


def test_silent_board_fails_the_handshake_within_the_timeout() -> None:
    with BoardEmulator(silent=True) as board:
        link = SerialLink(board.path, handshake_timeout_s=0.3)
        start_s = time.monotonic()
        with pytest.raises(BoardHandshakeError) as failure:
            link.open()
        elapsed_s = time.monotonic() - start_s
        # The timeout is the point: not before it, and well short of the 1 s default (headroom
        # for a busy 2-core machine: the emulator and this process share the cores).
        assert 0.3 <= elapsed_s < 0.9
        message = str(failure.value)
        assert board.path in message and "~RT" in message and "got nothing" in message
        assert not link.connected


def test_missing_port_is_a_link_error(tmp_path: Path) -> None:
    with pytest.raises(BoardLinkError, match="cannot open"):
        SerialLink(str(tmp_path / "nothing")).open()


@pytest.mark.parametrize("kind", ["file", "folder", "dev-null"])
def test_a_path_that_is_no_serial_device_says_so(tmp_path: Path, kind: str) -> None:
    path = {"file": tmp_path / "notes.txt", "folder": tmp_path, "dev-null": Path("/dev/null")}[kind]
    if kind == "file":
        path.write_text("not a board")
    with pytest.raises(BoardLinkError, match=f"^{path}: not a serial device") as err:
        SerialLink(str(path)).open()
    assert "ioctl" not in str(err.value)


def test_send_before_open_is_dropped_not_raised() -> None:
    link = SerialLink("/nonexistent")
    result = link.send(encode_move({1: 1500}))
    assert not result.connected and link.counters.frames_dropped_disconnected == 1


def test_moves_arrive_exactly_and_replies_are_counted() -> None:
    with BoardEmulator() as board, SerialLink(board.path) as link:
        sent = []
        for step in range(50):
            pulses_us, data = frame(step)
            result = link.send(data)
            assert result.connected and result.queued == 0 and result.bytes_written == len(data)
            sent.append(pulses_us)
            link.poll()
        assert board.wait_for(lambda b: b.moves_received == 50, 2.0)
        assert [m.pulses_us for m in board.moves] == sent
        assert all(m.time_ms == 20 for m in board.moves)
        assert poll_until(link, lambda: link.counters.replies_ok == 50, 2.0)
        assert (link.counters.frames_sent, link.counters.frames_coalesced, link.counters.replies_other, board.framing_errors) == (50, 0, 0, 0)


class EmulatorProcess:
    """The emulator CLI in its own process, as in deployment: no GIL shared with the link.

    Its output is not read until :meth:`read_output` (a reader thread in this process would
    compete for the GIL with the calls being timed); a full pipe only makes it a slower board.
    """

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sim.board_emulator", *args],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        assert first.startswith("board emulator on "), first
        self.path = first.split()[3]
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(iter(self.process.stdout.readline, ""))

    def read_output(self) -> None:
        self._reader.start()

    def stop(self) -> list[str]:
        """SIGTERM it and return all its output lines (the last is the summary)."""
        if self._reader.ident is None:
            self.read_output()  # drain the pipe, or the emulator could block printing on exit
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.lines


def timed(call: Callable[[], object]) -> tuple[float, int]:
    """Wall seconds of call() and the involuntary context switches of this thread during it.

    On a busy machine a call can take milliseconds because the scheduler preempted it (an
    involuntary switch), which says nothing about the link; so a send may exceed 2 ms only if
    it was preempted. A blocking write would stall for as long as the board needs to drain
    the pty buffer (hundreds of ms here) and would leave nothing queued, which is asserted
    separately.
    """
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
    start_s = time.perf_counter()
    call()
    elapsed_s = time.perf_counter() - start_s
    return elapsed_s, resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw - before


def test_slow_board_never_blocks_and_never_sees_a_torn_frame() -> None:
    board = EmulatorProcess("--slow", "20000")
    try:
        with SerialLink(board.path) as link:
            send_timings, poll_timings, results = [], [], []
            last_pulses_us: dict[int, int] = {}
            gc.disable()  # time the link, not the test process's garbage collector
            try:
                for step in range(400):  # ~53 kB at once, three times the pty's buffer
                    last_pulses_us, data = frame(step)
                    send_timings.append(timed(lambda: results.append(link.send(data))))
                    poll_timings.append(timed(link.poll))
            finally:
                gc.enable()
            slow = [timing for timing in send_timings if timing[0] >= 0.002]
            assert all(preempted for _, preempted in slow), f"send slow without preemption: {slow}"
            # A tty read may wait briefly in the kernel for its flip buffer to be flushed when
            # the CPUs are saturated; a read that blocks on the board would wait far longer.
            assert max(elapsed_s for elapsed_s, _ in poll_timings) < 0.05
            assert any(result.queued for result in results), "the OS never refused a byte: no back-pressure"
            assert link.counters.frames_coalesced > 0
            board.read_output()
            assert poll_until(link, lambda: link.pending_bytes == 0, 5.0)
            deadline_s = time.monotonic() + 5.0
            while len(board.lines) < link.counters.frames_sent and time.monotonic() < deadline_s:
                time.sleep(0.01)
    finally:
        lines = board.stop()
    summary = lines[-1]
    assert f"moves={link.counters.frames_sent} " in summary and "framing_errors=0 " in summary, summary
    last_move = lines[-2].split()[1:]
    assert last_move == [f"{ch}:{us}" for ch, us in last_pulses_us.items()] + ["T20"]


def test_unplug_reports_loss_and_replug_reconnects(tmp_path: Path) -> None:
    events = Events()
    path = tmp_path / "usb-rtrobot"
    with BoardEmulator(link_path=path) as board:
        link = SerialLink(str(path), reconnect_initial_s=0.05, reconnect_max_s=0.2, on_event=events)
        link.open()
        try:
            link.send(frame(0)[1])
            assert board.wait_for(lambda b: b.moves_received == 1, 1.0)
            board.unplug()
            results = []
            for step in range(20):  # sends and polls on a lost link neither raise nor wait
                results.append(link.send(frame(step)[1]))
                link.poll()
                time.sleep(0.01)
            assert not link.connected and not results[-1].connected
            assert "serial_lost" in events.names()
            assert link.counters.frames_dropped_disconnected >= 19
            board.replug()
            assert poll_until(link, lambda: link.connected, 3.0)
            assert link.counters.reconnects == 1 and board.handshakes == 2
            assert events.names()[-2:] == ["handshake", "serial_reconnected"]
            pulses_us, data = frame(99)
            assert link.send(data).connected
            assert board.wait_for(lambda b: b.latest_pulse_us == pulses_us, 1.0)
            assert board.framing_errors == 0
        finally:
            link.close()


def test_reconnect_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "board"
    with BoardEmulator(link_path=path) as board, SerialLink(str(path), reconnect_initial_s=0.02) as link:
        board.unplug()
        board.replug()
        flags = []
        deadline = time.monotonic() + 3.0
        while sum(flags) == 0 and time.monotonic() < deadline:
            link.poll()
            flags.append(link.take_reconnected())
            link.send(frame(0)[1])
            time.sleep(0.005)
        link.poll()
        assert sum(flags) == 1 and not link.take_reconnected()


def test_flush_waits_for_pending_bytes_at_shutdown() -> None:
    with BoardEmulator(read_rate_bytes_s=50_000) as board, SerialLink(board.path) as link:
        for step in range(300):
            link.send(frame(step)[1])
        assert link.pending_bytes > 0
        assert link.flush(timeout_s=3.0) and link.pending_bytes == 0


class DriverQueueLink(SerialLink):
    """A link whose driver reports a queue (as USB-serial drivers do; a pty always reports 0).

    The reported queue is the only stand-in here: the port, the writes and the board are real.
    """

    driver_queue_bytes = 0

    def _os_queued_bytes(self) -> int:
        return self.driver_queue_bytes


def test_no_new_frame_is_started_while_the_driver_queue_is_full() -> None:
    """Stale commands pile up in our buffer (where they coalesce), not in the kernel's."""
    with BoardEmulator() as board, DriverQueueLink(board.path, max_os_queue_bytes=280) as link:
        link.driver_queue_bytes = 1000  # a slow board: the driver still holds ~7 frames
        frames = [frame(step) for step in range(20)]
        for _, data in frames:
            result = link.send(data)
            assert result.bytes_written == 0 and result.connected
        assert link.counters.frames_coalesced == 19 and link.pending_bytes == len(frames[-1][1])
        link.driver_queue_bytes = 100  # the board caught up: only the newest frame goes out
        link.poll()
        assert board.wait_for(lambda b: b.moves_received == 1, 2.0)
        assert board.moves[0].pulses_us == frames[-1][0] and board.framing_errors == 0
