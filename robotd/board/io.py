"""The board side of the safety layer as an interface: the serial link, or an in-memory fake.

:class:`robotd.daemon.safety.Safety` owns one :class:`BoardIo` and is the only thing that
writes to it. Each tick it reads the link's state (:meth:`BoardIo.poll`, then
:meth:`BoardIo.take_reconnected`: was the board re-powered, is it connected) and writes at
most one frame (:meth:`BoardIo.send`). The daemon passes the real
:class:`robotd.board.link.SerialLink`; the safety rules' unit tests pass a :class:`FakeBoard`,
which needs no pty and fails on demand at one exact tick (a short write, a silent board, a
board reset mid-move). The board emulator's pty stays for the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Protocol

from robotd.board.link import LinkCounters, PollResult, SendResult


class BoardIo(Protocol):
    """What the safety layer needs of a link to the board, and nothing more."""

    counters: LinkCounters

    @property
    def connected(self) -> bool: ...

    def open(self) -> int:
        """Connect and handshake (blocking: before the loop starts); the handshake byte."""
        ...

    def poll(self) -> PollResult:
        """Once per tick, never blocking: finish pending writes, adopt a reconnected port, read replies."""
        ...

    def take_reconnected(self) -> bool:
        """True once after each reconnect: the board may have lost power, so resend every channel."""
        ...

    def send(self, frame: bytes) -> SendResult:
        """Write one whole frame as far as the OS takes it now; never blocks, never raises on loss."""
        ...

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for pending bytes (shutdown only); True if none are left."""
        ...

    def close(self) -> None: ...


class BoardFault(Enum):
    """A fault :class:`FakeBoard` injects at the start of a chosen tick."""

    SHORT_WRITE = "short_write"  # the OS takes only half of this tick's frame; the rest goes out next tick
    SILENT = "silent"  # the board is gone (cable pulled): frames are dropped until a RESET
    RESET = "reset"  # the board was re-powered and the link reconnected: it holds no pulses


class FakeBoard:
    """An in-memory :class:`BoardIo`: records what the board receives and fails on demand.

    A tick is one :meth:`poll` (the safety layer polls once per tick, first): ``faults`` maps a
    tick index (0 = the first poll) to the :class:`BoardFault` that happens at its start.
    ``received`` holds every byte the board got, in order; ``frames`` every frame the owner
    sent while connected, whether or not all of it has reached the board yet.
    """

    def __init__(self, faults: Mapping[int, BoardFault] | None = None) -> None:
        self.faults = dict(faults or {})
        self.counters = LinkCounters()
        self.received = bytearray()
        self.frames: list[bytes] = []
        self.tick = -1
        self._connected = False
        self._pending = b""  # the unwritten rest of a short-written frame
        self._short_write = False
        self._reconnected = False

    @property
    def connected(self) -> bool:
        return self._connected

    def open(self) -> int:
        self._connected = True
        self.counters.handshake_byte = 0
        return 0

    def poll(self) -> PollResult:
        self.tick += 1
        fault = self.faults.get(self.tick)
        if fault is BoardFault.SILENT or fault is BoardFault.RESET:
            self._connected = fault is BoardFault.RESET
            self._pending = b""
            if fault is BoardFault.RESET:
                self._reconnected = True
                self.counters.reconnects += 1
        self._short_write = fault is BoardFault.SHORT_WRITE
        return PollResult((), self._write_pending(), self._connected)

    def take_reconnected(self) -> bool:
        reconnected, self._reconnected = self._reconnected, False
        return reconnected

    def send(self, frame: bytes) -> SendResult:
        if not self._connected:
            self.counters.frames_dropped_disconnected += 1
            return SendResult(0, 0.0, 0, False, False)
        written = self._write_pending()  # a started frame is finished before the next starts
        self.frames.append(frame)
        taken = len(frame) // 2 if self._short_write else len(frame)
        self._short_write = False
        self.received += frame[:taken]
        self._pending = frame[taken:]
        if not self._pending:
            self.counters.frames_sent += 1
        written += taken
        self.counters.bytes_written += taken
        return SendResult(written, 0.0, len(self._pending), False, True)

    def flush(self, timeout_s: float) -> bool:
        self._write_pending()
        return self._connected

    def close(self) -> None:
        self._connected = False

    def _write_pending(self) -> int:
        """Hand the rest of a short-written frame to the board; the bytes written."""
        pending, self._pending = self._pending, b""
        if pending:
            self.received += pending
            self.counters.bytes_written += len(pending)
            self.counters.frames_sent += 1
        return len(pending)
