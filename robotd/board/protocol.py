"""The rtrobot 32-channel servo board's serial protocol: move encoding and reply splitting.

What is known (see ``docs/board.md``): after ``~RT`` (answered by ``RT`` plus one unexplained
byte) and ``~OL`` the board accepts group moves ``#<ch>P<pulse_us>...[T<time_ms>]\\r\\n`` with
1-based channels and pulses of 500..2500 us, and may answer ``OK`` at any time. Nothing here
does I/O: :mod:`robotd.board.link` owns the port, this module only turns numbers into bytes
and bytes into replies, so both halves can be tested without a board.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

from calibration.description import PULSE_MAX_US, PULSE_MIN_US

#: Handshake request; the board answers ``RT`` followed by one byte (0x17 was observed).
HANDSHAKE_REQUEST = b"~RT"
#: The handshake answer's prefix.
HANDSHAKE_REPLY_PREFIX = b"RT"
#: Sent after the handshake; its meaning is unknown but the board ignores moves without it.
#: The vendor software sometimes sends it without the tilde (:data:`INIT_COMMAND_SHORT`).
INIT_COMMAND = b"~OL"
INIT_COMMAND_SHORT = b"OL"
#: Stop (no terminator).
STOP_COMMAND = b"~ST"
#: The acknowledgement the board sends after a move (on receipt or completion: unverified).
OK_REPLY = b"OK"
TERMINATOR = b"\r\n"

CHANNEL_MIN = 1
CHANNEL_MAX = 32

__all__ = [
    "CHANNEL_MAX", "CHANNEL_MIN", "HANDSHAKE_REPLY_PREFIX", "HANDSHAKE_REQUEST", "INIT_COMMAND",
    "INIT_COMMAND_SHORT", "OK_REPLY", "PULSE_MAX_US", "PULSE_MIN_US", "STOP_COMMAND", "TERMINATOR",
    "Reply", "ReplyParser", "encode_move",
]


def encode_move(pulses_us: Mapping[int, float], time_ms: int | None = None) -> bytes:
    """Encode one group move: ``#<ch>P<us>#<ch>P<us>...[T<ms>]\\r\\n``, channels ascending.

    All channels in one frame start and finish together on the board. Pulses are rounded to
    whole microseconds (the board's resolution beyond that is unverified) and must then lie in
    500..2500 us; channels must be integers in 1..32. Out-of-range values raise ``ValueError``
    rather than being clamped silently: clamping to calibrated joint limits is the safety
    layer's job, and a value arriving here out of range means that job was skipped.
    """
    if not pulses_us:
        raise ValueError("a move needs at least one channel")
    parts = []
    for channel in sorted(pulses_us):
        if isinstance(channel, bool) or not isinstance(channel, int) or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise ValueError(f"channel {channel!r} outside {CHANNEL_MIN}..{CHANNEL_MAX}")
        pulse_us = float(pulses_us[channel])
        if not math.isfinite(pulse_us):
            raise ValueError(f"channel {channel}: pulse {pulse_us!r} us is not finite")
        rounded_us = round(pulse_us)
        if not PULSE_MIN_US <= rounded_us <= PULSE_MAX_US:
            raise ValueError(f"channel {channel}: pulse {pulse_us:g} us outside {PULSE_MIN_US}..{PULSE_MAX_US} us")
        parts.append(f"#{channel}P{rounded_us}")
    if time_ms is not None:
        if isinstance(time_ms, bool) or not isinstance(time_ms, int) or time_ms < 0:
            raise ValueError(f"time_ms must be a non-negative integer, got {time_ms!r}")
        parts.append(f"T{time_ms}")
    return "".join(parts).encode("ascii") + TERMINATOR


ReplyKind = Literal["handshake", "ok", "other"]


@dataclass(frozen=True)
class Reply:
    """One reply from the board.

    ``kind`` is ``"handshake"`` (``data`` is the single byte after ``RT``), ``"ok"`` (``data``
    is ``b"OK"``) or ``"other"`` (``data`` is the unrecognised bytes, terminator excluded).
    """

    kind: ReplyKind
    data: bytes


class ReplyParser:
    """Split received byte chunks into :class:`Reply` records; never blocks, never raises.

    Bytes arrive in arbitrary chunks (a USB packet, a non-blocking read), so a token may be
    split across calls: an incomplete ``RT``/``OK`` at the end of the buffer is kept until the
    next :meth:`feed`. ``RT`` and ``OK`` are recognised anywhere, so noise before them costs
    one ``other`` reply, not the answer. ``\\r``/``\\n`` separate replies and are dropped.
    Unrecognised bytes end at a terminator or at the next token; an unterminated run longer
    than :attr:`MAX_OTHER_BYTES` is flushed as ``other`` so garbage cannot grow the buffer.
    """

    MAX_OTHER_BYTES = 256
    _TOKENS = (HANDSHAKE_REPLY_PREFIX, OK_REPLY)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Reply]:
        """Add received bytes; return the replies completed by them, oldest first."""
        self._buffer += chunk
        replies: list[Reply] = []
        buffer = self._buffer
        while True:
            start = 0
            while start < len(buffer) and buffer[start] in b"\r\n":
                start += 1
            del buffer[:start]
            if not buffer:
                break
            if buffer.startswith(HANDSHAKE_REPLY_PREFIX):
                if len(buffer) < 3:
                    break
                replies.append(Reply("handshake", bytes(buffer[2:3])))
                del buffer[:3]
                continue
            if buffer.startswith(OK_REPLY):
                replies.append(Reply("ok", OK_REPLY))
                del buffer[:2]
                continue
            end = self._other_end(buffer)
            if end is None:
                break
            replies.append(Reply("other", bytes(buffer[:end])))
            del buffer[:end]
        return replies

    def discard_partial(self) -> None:
        """Forget an incomplete reply (the port it came from is gone)."""
        self._buffer.clear()

    def _other_end(self, buffer: bytearray) -> int | None:
        """Where the unrecognised run at the buffer's start ends, or None to wait for more."""
        candidates = [i for i in (buffer.find(t, 1) for t in (*self._TOKENS, b"\r", b"\n")) if i > 0]
        if candidates:
            return min(candidates)
        if len(buffer) > self.MAX_OTHER_BYTES:
            return len(buffer)
        return None  # the run may go on (or end in half a token) in the next chunk
