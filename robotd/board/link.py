"""The serial link to the servo board: handshake, non-blocking whole-frame writes, reconnect.

The control loop must never wait on the board: a slow or stuck board, or a pulled USB
cable, may cost frames but never a tick. So:

* writes are non-blocking ``os.write`` calls on the port's fd (pyserial's own ``write`` with
  ``write_timeout=0`` spins on EAGAIN, so it is not used), with a pending-output buffer;
* a frame is either written whole or not started: the rest of a partly written frame is
  finished before anything else, and a newer frame replaces an older one that has not
  started (coalescing), so the board never sees half a command followed by another;
* a new frame is only started while the driver's output queue (``TIOCOUTQ``) holds less
  than ``max_os_queue_bytes``: otherwise a slow board would have seconds of stale commands
  queued in the kernel ahead of the newest one (a safe-pose move included). Waiting frames
  stay in our buffer, where they are coalesced. (A pty reports 0 here, so the emulator's slow
  mode exercises only the kernel buffer; real USB-serial drivers report their queue.)
* a read or write error (EIO when the pty or USB device goes away, hang-up on read) marks the
  link lost; a background thread reopens the port and redoes the handshake with exponential
  back-off, and the owner adopts the new port on its next :meth:`SerialLink.send` or
  :meth:`SerialLink.poll`; :meth:`SerialLink.take_reconnected` then tells it to resend a
  full frame.

Threading: one owner (the safety layer) calls every public method from one thread; the reconnect thread touches only the hand-over slot, under a lock.
``on_event`` callbacks therefore always run on the owner's thread.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import stat
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import serial

from robotd.board.protocol import (
    HANDSHAKE_REQUEST,
    INIT_COMMAND,
    INIT_COMMAND_SHORT,
    Reply,
    ReplyParser,
)

logger = logging.getLogger(__name__)

#: Bytes read per ``os.read`` in :meth:`SerialLink.poll`; replies are a few bytes per move.
_READ_CHUNK_BYTES = 4096
#: Default cap on the driver's output queue before a new frame is started: two full frames.
DEFAULT_MAX_OS_QUEUE_BYTES = 2 * 140


class EventCallback(Protocol):
    def __call__(self, name: str, /, **details: object) -> None: ...


class BoardLinkError(ConnectionError):
    """The serial port could not be opened or set up."""


class BoardHandshakeError(BoardLinkError):
    """The board did not answer ``~RT`` with ``RT`` + one byte in time."""


def _check_serial_device(path: str) -> None:
    """A clear error for a path that exists but cannot be a serial port (a file, a folder).

    pyserial would open it and then fail with the raw ``Inappropriate ioctl for device``.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: pyserial's own message says so
    if not stat.S_ISCHR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else "a folder" if stat.S_ISDIR(mode) else "not a device"
        raise BoardLinkError(f"{path}: not a serial device ({kind}); give the board's port, e.g. /dev/ttyACM0")


@dataclass(frozen=True)
class SendResult:
    """What one :meth:`SerialLink.send` did.

    ``queued`` counts bytes not yet handed to the OS after the call (this frame's and any
    older frame's). While it is non-zero the frame may still be replaced by the next ``send``
    (if none of it was written yet), so an owner that sends only changed channels should
    treat this frame's channels as unsent and include them again; sending a channel twice is
    harmless, losing one is not.
    """

    bytes_written: int  # handed to the OS during this call, older frames' bytes included
    write_us: float  # time spent writing during this call
    queued: int  # bytes still pending after this call
    coalesced: bool  # an older frame that had not started was dropped in favour of this one
    connected: bool  # False: the link is lost and the frame was dropped


@dataclass(frozen=True)
class PollResult:
    """What one :meth:`SerialLink.poll` did."""

    replies: tuple[Reply, ...]
    bytes_written: int
    connected: bool


@dataclass
class LinkCounters:
    """Running totals since the link was created (reconnects included)."""

    bytes_written: int = 0
    frames_sent: int = 0  # frames completely handed to the OS
    frames_coalesced: int = 0  # frames replaced before a byte of them was written
    frames_dropped_disconnected: int = 0  # sent while lost, or pending when the link was lost
    write_errors: int = 0
    read_errors: int = 0
    reconnects: int = 0
    replies_ok: int = 0
    replies_other: int = 0  # anything but OK after the handshake
    handshake_byte: int | None = None  # the byte after RT in the latest handshake


@dataclass
class _Handover:
    """A reopened, handshaken port waiting for the owner to adopt it."""

    port: serial.Serial
    handshake_byte: int
    handshake_ms: float
    attempts: int


@dataclass
class _Lost:
    since_s: float
    thread: threading.Thread = field(repr=False)


class SerialLink:
    """The one connection to the servo board; see the module docstring for the rules."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        handshake_timeout_s: float = 1.0,
        ol_command: str = "~OL",
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 2.0,
        max_os_queue_bytes: int = DEFAULT_MAX_OS_QUEUE_BYTES,
        on_event: EventCallback | None = None,
    ) -> None:
        init_commands = {INIT_COMMAND.decode(): INIT_COMMAND, INIT_COMMAND_SHORT.decode(): INIT_COMMAND_SHORT}
        if ol_command not in init_commands:
            raise ValueError(f"ol_command must be one of {sorted(init_commands)}, got {ol_command!r}")
        self.port = port
        self.baudrate = baudrate
        self.handshake_timeout_s = handshake_timeout_s
        self.ol_command = init_commands[ol_command]
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.max_os_queue_bytes = max_os_queue_bytes
        self.on_event = on_event
        self.counters = LinkCounters()
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._partial: memoryview | None = None  # the unwritten rest of a started frame
        self._waiting: bytes | None = None  # a frame not started yet (replaceable)
        self._parser = ReplyParser()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._handover: _Handover | None = None
        self._lost: _Lost | None = None
        self._reconnected_unreported = False

    # ------------------------------------------------------------------ owner API

    @property
    def connected(self) -> bool:
        return self._serial is not None

    @property
    def pending_bytes(self) -> int:
        return (len(self._partial) if self._partial else 0) + (len(self._waiting) if self._waiting else 0)

    def open(self) -> int:
        """Open the port and do the handshake; return the handshake byte.

        Blocks for at most ``handshake_timeout_s`` (plus the port's open time): call it at
        start-up, never from the loop's tick. Raises :class:`BoardHandshakeError` if the board
        does not answer and :class:`BoardLinkError` if the port cannot be opened.
        """
        if self._serial is not None:
            raise BoardLinkError(f"{self.port}: already open")
        self._closing.clear()
        port = self._open_port()
        try:
            handshake_byte, handshake_ms = self._handshake(port)
        except BaseException:
            port.close()
            raise
        self._adopt(port, handshake_byte, handshake_ms)
        return handshake_byte

    def send(self, frame: bytes) -> SendResult:
        """Queue ``frame`` and write what the OS accepts now; never blocks, never raises on loss."""
        self._adopt_handover()
        if self._serial is None:
            self.counters.frames_dropped_disconnected += 1
            return SendResult(0, 0.0, 0, False, False)
        coalesced = self._waiting is not None
        if coalesced:
            self.counters.frames_coalesced += 1
        self._waiting = frame
        written, write_us = self._flush()
        return SendResult(written, write_us, self.pending_bytes, coalesced, self._serial is not None)

    def poll(self) -> PollResult:
        """Adopt a reconnected port, finish pending writes, read replies; call once per tick."""
        self._adopt_handover()
        written = 0
        replies: list[Reply] = []
        if self._serial is not None:
            written, _ = self._flush()
        while self._serial is not None:
            # With VMIN=0/VTIME=0 (pyserial's timeout=0) a read of an idle tty returns b"" just
            # like a hung-up one; only after select() reports readiness does b"" mean hang-up.
            try:
                if not select.select([self._fd], [], [], 0)[0]:
                    break
                chunk = os.read(self._fd, _READ_CHUNK_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                self.counters.read_errors += 1
                self._mark_lost(exc, "read")
                break
            if not chunk:  # readable yet empty: hang-up, the device is gone
                self.counters.read_errors += 1
                self._mark_lost(OSError(errno.EIO, "end of file (hang-up)"), "read")
                break
            for reply in self._parser.feed(chunk):
                if reply.kind == "ok":
                    self.counters.replies_ok += 1
                elif reply.kind == "other":
                    self.counters.replies_other += 1
                replies.append(reply)
        return PollResult(tuple(replies), written, self._serial is not None)

    def take_reconnected(self) -> bool:
        """True once after each reconnect: the board may have been re-powered, so the owner
        must resend a full frame (every channel) rather than only changed channels."""
        reconnected, self._reconnected_unreported = self._reconnected_unreported, False
        return reconnected

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until pending bytes are written; True if none are left.

        Blocks: only for shutdown (so the final safe-pose move reaches the board before the
        port closes), never from the tick.
        """
        deadline_s = time.monotonic() + timeout_s
        while self._serial is not None and self.pending_bytes:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                return False
            select.select([], [self._fd], [], remaining_s)
            self._flush()
        return self._serial is not None and self.pending_bytes == 0

    def close(self) -> None:
        """Stop reconnecting and close the port; pending bytes are dropped."""
        with self._lock:
            self._closing.set()
            handover, self._handover = self._handover, None
        if handover is not None:
            handover.port.close()
        if self._lost is not None:
            self._lost.thread.join(timeout=self.handshake_timeout_s + self.reconnect_max_s + 1.0)
            self._lost = None
        self._drop_port()

    def __enter__(self) -> SerialLink:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def _flush(self) -> tuple[int, float]:
        """Write pending bytes until the OS refuses more; return (bytes, microseconds)."""
        start_ns = time.perf_counter_ns()
        written = 0
        try:
            while True:
                if self._partial is not None:
                    count = self._write(self._partial)
                    written += count
                    self._partial = self._partial[count:] if count < len(self._partial) else None
                    if self._partial is not None:
                        break
                    self.counters.frames_sent += 1
                elif self._waiting is not None:
                    if self._os_queued_bytes() > self.max_os_queue_bytes:
                        break  # the driver is still busy with older frames: keep this one replaceable
                    count = self._write(self._waiting)
                    if count == 0:
                        break
                    written += count
                    # From here the frame has started and can no longer be replaced.
                    self._partial = memoryview(self._waiting)[count:] if count < len(self._waiting) else None
                    self._waiting = None
                    if self._partial is None:
                        self.counters.frames_sent += 1
                else:
                    break
        except OSError as exc:
            self.counters.write_errors += 1
            self._mark_lost(exc, "write")
        self.counters.bytes_written += written
        return written, (time.perf_counter_ns() - start_ns) / 1000.0

    def _os_queued_bytes(self) -> int:
        """Bytes the driver still holds for the board (``TIOCOUTQ``); 0 where not reported."""
        try:
            return struct.unpack("i", fcntl.ioctl(self._fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def _write(self, data: bytes | memoryview) -> int:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    # ------------------------------------------------------------------ loss and reconnect

    def _mark_lost(self, exc: OSError, during: str) -> None:
        dropped = (self._partial is not None) + (self._waiting is not None)
        self.counters.frames_dropped_disconnected += dropped
        self._partial = self._waiting = None
        self._drop_port()
        logger.warning("serial link %s lost during %s: %s", self.port, during, exc)
        thread = threading.Thread(target=self._reconnect, name="board-reconnect", daemon=True)
        self._lost = _Lost(time.monotonic(), thread)
        self._emit("serial_lost", port=self.port, during=during, error=str(exc), frames_dropped=dropped)
        thread.start()

    def _reconnect(self) -> None:
        """Background thread: reopen and handshake with exponential back-off until it works."""
        delay_s = self.reconnect_initial_s
        attempts = 0
        while not self._closing.wait(delay_s):
            attempts += 1
            try:
                port = self._open_port()
            except BoardLinkError as exc:
                logger.debug("reconnect attempt %d: %s", attempts, exc)
                delay_s = min(delay_s * 2, self.reconnect_max_s)
                continue
            try:
                handshake_byte, handshake_ms = self._handshake(port)
            except BoardLinkError as exc:
                port.close()
                logger.debug("reconnect attempt %d: %s", attempts, exc)
                delay_s = min(delay_s * 2, self.reconnect_max_s)
                continue
            with self._lock:
                if not self._closing.is_set():
                    self._handover = _Handover(port, handshake_byte, handshake_ms, attempts)
                    return
            port.close()
            return

    def _adopt_handover(self) -> None:
        if self._handover is None:  # the common case: no lock taken on the hot path
            return
        with self._lock:
            handover, self._handover = self._handover, None
        if handover is None:
            return
        lost = self._lost
        self._lost = None
        self.counters.reconnects += 1
        self._reconnected_unreported = True
        self._adopt(handover.port, handover.handshake_byte, handover.handshake_ms)
        self._emit(
            "serial_reconnected",
            port=self.port,
            attempts=handover.attempts,
            down_s=round(time.monotonic() - lost.since_s, 3) if lost else None,
        )

    def _adopt(self, port: serial.Serial, handshake_byte: int, handshake_ms: float) -> None:
        self._serial = port
        self._fd = port.fileno()
        self._parser.discard_partial()
        self.counters.handshake_byte = handshake_byte
        logger.info("board on %s answered the handshake: RT + 0x%02x (%.1f ms)", self.port, handshake_byte, handshake_ms)
        self._emit("handshake", port=self.port, byte=handshake_byte, handshake_ms=round(handshake_ms, 2))

    def _drop_port(self) -> None:
        port, self._serial, self._fd = self._serial, None, -1
        if port is not None:
            try:
                port.close()
            except (OSError, serial.SerialException):
                pass  # the device is already gone; nothing left to release

    def _emit(self, name: str, **details: object) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, **details)
        except Exception:  # a broken observer must not take the serial link down with it
            logger.exception("on_event callback failed for %s", name)

    # ------------------------------------------------------------------ opening and handshake

    def _open_port(self) -> serial.Serial:
        _check_serial_device(self.port)
        try:
            port = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0)
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            if "Inappropriate ioctl" in str(exc):  # a character device that is no terminal
                raise BoardLinkError(f"{self.port}: not a serial device (it does not take serial settings)") from exc
            raise BoardLinkError(f"{self.port}: cannot open: {exc}") from exc
        fd = port.fileno()
        # pyserial opens with O_NONBLOCK today; make sure of it, as the vendor software does.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        return port

    def _handshake(self, port: serial.Serial) -> tuple[int, float]:
        """Send ``~RT``, wait for ``RT`` + byte, send the init command; bounded by the timeout.

        Waiting for the answer before sending ``~OL`` orders the two commands the way the
        vendor's ``tcdrain`` did, without a drain that could hang on a stuck USB device.
        """
        try:
            return self._exchange_handshake(port)
        except BoardLinkError:
            raise
        except OSError as exc:
            raise BoardLinkError(f"{self.port}: I/O error during the handshake: {exc}") from exc

    def _exchange_handshake(self, port: serial.Serial) -> tuple[int, float]:
        fd = port.fileno()
        start_s = time.monotonic()
        deadline_s = start_s + self.handshake_timeout_s
        port.reset_input_buffer()
        _write_all(fd, HANDSHAKE_REQUEST, deadline_s, self.port)
        parser = ReplyParser()
        received = bytearray()
        while True:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise BoardHandshakeError(
                    f"{self.port}: no handshake answer within {self.handshake_timeout_s:g} s: "
                    f"sent {HANDSHAKE_REQUEST!r}, expected b'RT' + one byte, "
                    + (f"got {bytes(received)!r}" if received else "got nothing (board off, wrong port, or not this board?)")
                )
            ready, _, _ = select.select([fd], [], [], remaining_s)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 256)
            except BlockingIOError:
                continue
            if not chunk:
                raise BoardHandshakeError(f"{self.port}: port hung up during the handshake")
            received += chunk
            for reply in parser.feed(chunk):
                if reply.kind == "handshake":
                    _write_all(fd, self.ol_command, deadline_s, self.port)
                    return reply.data[0], (time.monotonic() - start_s) * 1000.0


def _write_all(fd: int, data: bytes, deadline_s: float, port_name: str) -> None:
    """Write ``data`` completely, waiting for writability until ``deadline_s`` (handshake only)."""
    view = memoryview(data)
    while view:
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0:
            raise BoardHandshakeError(f"{port_name}: could not send {data!r} within the handshake timeout")
        _, ready, _ = select.select([], [fd], [], remaining_s)
        if ready:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
