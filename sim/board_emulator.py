"""A pseudo-terminal that speaks the rtrobot servo board's protocol, for tests and dry runs.

The daemon opens :attr:`BoardEmulator.path` (or the stable :attr:`~BoardEmulator.link_path`)
exactly as it would open ``/dev/ttyACM0``; the emulator answers like the real board as far as
it is known (``docs/board.md``): moves are ignored until ``~RT``, which is answered with
``RT`` + 0x17; ``~OL``/``OL`` are accepted; each move is answered with ``OK\\r\\n``.

Beyond imitating the board it is a strict witness: every move is recorded with its receive
time, and anything malformed, interleaved (half a command followed by another) or out of
range is counted as a framing error and kept, so tests can prove the daemon never sends a
torn frame. Its parser is deliberately independent of ``robotd.board.protocol`` (``sim`` must
not import ``robotd``): the two implementations check each other.

Fault injection: ``silent`` (never answers), ``read_rate_bytes_s`` (a slow board that builds
back-pressure into the pty buffer), :meth:`BoardEmulator.unplug` / :meth:`BoardEmulator.replug`
(the daemon's reads and writes fail with EIO, the symlink disappears and comes back pointing
at a new pty, like ``/dev/serial/by-id`` on a USB replug).
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import queue
import re
import select
import signal
import sys
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

HANDSHAKE_BYTE = 0x17
CHANNELS = range(1, 33)
PULSE_RANGE_US = range(500, 2501)
#: A move longer than this without a terminator is treated as garbage (32 channels ~ 260 B).
MAX_LINE_BYTES = 512
_POLL_S = 0.02

_MOVE_RE = re.compile(rb"((?:#\d{1,2}P\d{1,4})+)(?:T(\d{1,5}))?(?:D(\d{1,5}))?\r\n")
_CHANNEL_RE = re.compile(rb"#(\d+)P(\d+)")


@dataclass(frozen=True)
class ReceivedMove:
    """One accepted move as the board saw it."""

    received_s: float  # time.monotonic() when its terminator was read
    pulses_us: dict[int, int]  # channel (1-based) -> pulse
    time_ms: int | None
    d_field: int | None  # the vendor samples' ``D<n>``; meaning unknown
    raw: bytes


@dataclass(frozen=True)
class BadFrame:
    """Bytes the board could not accept as a command, and why."""

    received_s: float
    data: bytes
    reason: str


class BoardEmulator:
    """A pty-backed emulated servo board with a reader thread; see the module docstring.

    Counters and records may be read from any thread; :meth:`wait_for` blocks until a
    condition over them holds. ``on_move`` runs on the reader thread for every accepted move.
    """

    def __init__(
        self,
        *,
        silent: bool = False,
        reply_ok: bool = True,
        read_rate_bytes_s: float | None = None,
        link_path: str | os.PathLike[str] | None = None,
        on_move: Callable[[ReceivedMove], None] | None = None,
        max_records: int = 10_000,
    ) -> None:
        self.silent = silent
        self.reply_ok = reply_ok
        #: May be changed while running (e.g. to let a slow board catch up at the end of a test).
        self.read_rate_bytes_s = read_rate_bytes_s
        self.link_path = Path(link_path) if link_path is not None else None
        self.on_move = on_move
        self.moves: collections.deque[ReceivedMove] = collections.deque(maxlen=max_records)
        self.bad_frames: collections.deque[BadFrame] = collections.deque(maxlen=max_records)
        self.latest_pulse_us: dict[int, int] = {}
        self.moves_received = 0
        self.moves_ignored = 0  # well-formed moves that arrived before ~RT
        self.framing_errors = 0
        self.handshakes = 0
        self.init_commands = 0
        self.stops = 0
        self.replies_sent = 0
        self.replies_dropped = 0  # the daemon did not read and the pty buffer was full
        self.bytes_received = 0
        self.initialised = False
        self.path = ""
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._buffer = bytearray()
        self._changed = threading.Condition()
        self._requests: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._plug()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> BoardEmulator:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="board-emulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the reader, close the pty and remove the symlink."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=2.0)
            self._thread = None
        self._unplug()

    def __enter__(self) -> BoardEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def unplug(self) -> None:
        """Simulate pulling the USB cable: the pty and the symlink disappear."""
        self._on_reader(self._unplug)

    def replug(self) -> None:
        """Simulate plugging it back in: a fresh pty (a re-powered board, not initialised)."""
        self._on_reader(self._plug)

    @property
    def plugged(self) -> bool:
        return self._master_fd is not None

    def wait_for(self, condition: Callable[[BoardEmulator], bool], timeout_s: float) -> bool:
        """Wait until ``condition(self)`` is true; False if it is not within ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout=timeout_s)

    def summary(self) -> str:
        return (
            f"moves={self.moves_received} ignored={self.moves_ignored} framing_errors={self.framing_errors} "
            f"handshakes={self.handshakes} init={self.init_commands} stops={self.stops} "
            f"bytes={self.bytes_received} replies={self.replies_sent} replies_dropped={self.replies_dropped}"
        )

    # ------------------------------------------------------------------ pty handling

    def _plug(self) -> None:
        master_fd, slave_fd = os.openpty()
        tty.setraw(slave_fd)
        fcntl.fcntl(master_fd, fcntl.F_SETFL, fcntl.fcntl(master_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        # Holding the slave open keeps the pty alive (and the master readable without EIO)
        # while the daemon closes and reopens it.
        self._master_fd, self._slave_fd = master_fd, slave_fd
        self.path = os.ttyname(slave_fd)
        self._buffer.clear()
        self.initialised = False
        if self.link_path is not None:
            temporary = self.link_path.with_name(self.link_path.name + ".tmp")
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(self.path)
            temporary.replace(self.link_path)

    def _unplug(self) -> None:
        for fd in (self._master_fd, self._slave_fd):
            if fd is not None:
                os.close(fd)
        self._master_fd = self._slave_fd = None
        if self.link_path is not None:
            self.link_path.unlink(missing_ok=True)

    def _on_reader(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the reader thread, so no fd is closed under a pending select()."""
        if self._thread is None:
            action()
            return
        done = threading.Event()
        self._requests.put((action, done))
        done.wait()

    def _run(self) -> None:
        tokens = 0.0
        last_s = time.monotonic()
        while not self._stopping.is_set():
            while not self._requests.empty():
                action, done = self._requests.get()
                action()
                done.set()
            if self._master_fd is None:
                time.sleep(_POLL_S)
                continue
            limit = 4096
            rate = self.read_rate_bytes_s
            now_s = time.monotonic()
            if rate:
                tokens = min(tokens + (now_s - last_s) * rate, max(rate * _POLL_S, 1.0))
                if tokens < 1.0:
                    last_s = now_s
                    time.sleep(min((1.0 - tokens) / rate, _POLL_S))
                    continue
                limit = min(limit, int(tokens))
            last_s = now_s
            ready, _, _ = select.select([self._master_fd], [], [], _POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self._master_fd, limit)
            except OSError:  # EIO while no slave is open: the daemon has let go of the port
                time.sleep(_POLL_S)
                continue
            if rate:
                tokens -= len(data)
            self._receive(data)

    # ------------------------------------------------------------------ protocol

    def _receive(self, data: bytes) -> None:
        now_s = time.monotonic()
        accepted: list[ReceivedMove] = []
        with self._changed:
            self.bytes_received += len(data)
            self._buffer += data
            self._parse(now_s, accepted)
            self._changed.notify_all()
        if self.on_move is not None:
            for move in accepted:
                self.on_move(move)

    def _parse(self, now_s: float, accepted: list[ReceivedMove]) -> None:
        buffer = self._buffer
        while buffer:
            first = buffer[:1]
            if first == b"~":
                if len(buffer) < 3:
                    return
                self._command(now_s, bytes(buffer[:3]))
                del buffer[:3]
            elif first == b"O":
                if len(buffer) < 2:
                    return
                if buffer.startswith(b"OL"):
                    self.init_commands += 1
                    del buffer[:2]
                else:
                    self._garbage(now_s)
            elif first == b"#":
                end = buffer.find(b"\n")
                if end < 0:
                    if len(buffer) > MAX_LINE_BYTES:
                        self._bad(now_s, bytes(buffer), "unterminated move")
                        buffer.clear()
                    return
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                move = self._move(now_s, line)
                if move is not None:
                    accepted.append(move)
            else:
                self._garbage(now_s)

    def _command(self, now_s: float, command: bytes) -> None:
        if command == b"~RT":
            self.handshakes += 1
            self.initialised = True
            if not self.silent:
                self._reply(b"RT" + bytes([HANDSHAKE_BYTE]))
        elif command == b"~OL":
            self.init_commands += 1
        elif command == b"~ST":
            self.stops += 1
        else:
            self._bad(now_s, command, "unknown ~ command")

    def _garbage(self, now_s: float) -> None:
        """Drop bytes up to the next command start or past the next line end."""
        buffer = self._buffer
        ends = [i for i in (buffer.find(b"#", 1), buffer.find(b"~", 1)) if i > 0]
        newline = buffer.find(b"\n")
        if newline >= 0:
            ends.append(newline + 1)
        end = min(ends) if ends else len(buffer)
        self._bad(now_s, bytes(buffer[:end]), "not a command")
        del buffer[:end]

    def _move(self, now_s: float, line: bytes) -> ReceivedMove | None:
        match = _MOVE_RE.fullmatch(line)
        if match is None:
            self._bad(now_s, line, "malformed move")
            return None
        pulses_us: dict[int, int] = {}
        for channel_text, pulse_text in _CHANNEL_RE.findall(match.group(1)):
            channel, pulse_us = int(channel_text), int(pulse_text)
            if channel in pulses_us:
                self._bad(now_s, line, f"channel {channel} twice (interleaved commands?)")
                return None
            if channel not in CHANNELS or pulse_us not in PULSE_RANGE_US:
                self._bad(now_s, line, f"channel {channel} pulse {pulse_us} us out of range")
                return None
            pulses_us[channel] = pulse_us
        if not self.initialised:
            self.moves_ignored += 1
            return None
        move = ReceivedMove(
            received_s=now_s,
            pulses_us=pulses_us,
            time_ms=int(match.group(2)) if match.group(2) else None,
            d_field=int(match.group(3)) if match.group(3) else None,
            raw=line,
        )
        self.moves.append(move)
        self.moves_received += 1
        self.latest_pulse_us.update(pulses_us)
        if self.reply_ok and not self.silent:
            self._reply(b"OK\r\n")
        return move

    def _bad(self, now_s: float, data: bytes, reason: str) -> None:
        self.framing_errors += 1
        self.bad_frames.append(BadFrame(now_s, data, reason))

    def _reply(self, data: bytes) -> None:
        try:
            written = os.write(self._master_fd, data) if self._master_fd is not None else 0
        except OSError:
            written = 0
        if written == len(data):
            self.replies_sent += 1
        else:
            self.replies_dropped += 1


# ---------------------------------------------------------------------- CLI


def _format_move(move: ReceivedMove) -> str:
    channels = " ".join(f"{ch}:{us}" for ch, us in move.pulses_us.items())
    timing = f" T{move.time_ms}" if move.time_ms is not None else ""
    return f"{move.received_s:12.3f}  {channels}{timing}"


def main(argv: Sequence[str] | None = None) -> int:
    """``robotd board-emulator``: run an emulated board until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="robotd board-emulator",
        description="Emulate the rtrobot servo board on a pseudo-terminal; point the daemon's serial port at it.",
    )
    parser.add_argument("--silent", action="store_true", help="never answer (a dead board)")
    parser.add_argument("--slow", type=float, metavar="BYTES_S", help="read at most BYTES_S bytes/s (a slow board)")
    parser.add_argument("--link", metavar="PATH", help="also create a stable symlink PATH to the pty")
    parser.add_argument("--no-ok", action="store_true", help="do not answer moves with OK")
    parser.add_argument(
        "--summary-s", type=float, metavar="S",
        help="print a summary every S seconds instead of a line per move",
    )
    args = parser.parse_args(argv)

    def print_move(move: ReceivedMove) -> None:
        print(_format_move(move), flush=True)

    emulator = BoardEmulator(
        silent=args.silent,
        reply_ok=not args.no_ok,
        read_rate_bytes_s=args.slow,
        link_path=args.link,
        on_move=None if args.summary_s else print_move,
    )
    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with emulator:
            print(f"board emulator on {emulator.path}" + (f" (link {emulator.link_path})" if args.link else ""), flush=True)
            try:
                while not stop.wait(args.summary_s or 1.0):
                    if args.summary_s:
                        print(emulator.summary(), flush=True)
            except KeyboardInterrupt:
                pass
            print(emulator.summary(), flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
