"""The phone's UDP socket: sender filter, parse, fuse, publish the newest snapshot.

The receiver runs as an asyncio task. For each datagram it checks the sender, parses,
drops readings that are older than (or equal to) what it already used, fuses the rest and
replaces :attr:`PhoneReceiver.snapshot` with a new immutable :class:`PhoneSnapshot`. The
control loop reads that attribute once per tick and never waits on the receiver: a
reference read is atomic, so "newest wins" needs no lock.

Nothing a sender does can stop the task or grow memory without bound: malformed packets
are counted by (constant) reason, foreign senders are counted, and the readings kept for
the latency log (:meth:`PhoneReceiver.drain_readings`) live in a bounded drop-oldest queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import asyncio_dgram
import numpy as np

from robotd.phone.fusion import Fusion
from robotd.phone.clock import ClockOffset
from robotd.phone.formats import MalformedPacket, Parser, SensorReading

log = logging.getLogger("robotd.phone")

#: A phone timestamp this far behind the newest one is not reordering (UDP on a LAN does
#: not reorder by seconds) but a restarted stream: clock estimate and ordering start over.
CLOCK_RESET_S = 2.0
#: Distinct foreign addresses remembered for logging (one warning each).
_MAX_FOREIGN_LOGGED = 16

Allow = set[str] | Literal["first"] | None
#: One reading as the latency log stores it: (arrival_t, phone_t, kind, values).
LoggedReading = tuple[float, float | None, str, tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class PhoneSnapshot:
    """The newest fused phone packet, replaced whole by the receiver (never mutated)."""

    seq: int  # accepted-packet counter, from 1
    arrival_mono_s: float  # time.monotonic() when the datagram was taken off the socket
    phone_time_s: float | None  # newest phone timestamp in the packet, phone clock
    quat_wxyz: np.ndarray | None  # torso->world, read-only
    gyro_torso_rad_s: np.ndarray | None  # read-only
    parse_us: float
    fuse_us: float
    age_at_arrival_ms: float | None  # clock-offset corrected; None for untimed formats
    format: str
    source: str  # orientation source: "ahrs", a rotation-vector kind, or "none"
    # When the newest reading behind each signal arrived (None: as the packet). Any packet
    # refreshes arrival_mono_s; these move only when their own signal does.
    quat_arrival_mono_s: float | None = None
    gyro_arrival_mono_s: float | None = None

    def age_ms(self, now_mono_s: float) -> float:
        """Estimated age at ``now`` of the oldest signal the observation uses (orientation,
        gyro): time since it arrived + the newest packet's age at arrival (0 if unknown).

        Stale if any signal is stale: a gyro that stopped while the rotation vector keeps
        arriving must not look fresh.
        """
        arrivals = [t for t in (self.quat_arrival_mono_s, self.gyro_arrival_mono_s) if t is not None]
        oldest = min(arrivals) if arrivals else self.arrival_mono_s
        return (now_mono_s - oldest) * 1e3 + (self.age_at_arrival_ms or 0.0)


@dataclass
class ReceiverCounters:
    """Totals since start; the health line and the log summary read them."""

    accepted: int = 0
    malformed: dict[str, int] = field(default_factory=dict)  # by MalformedPacket.reason
    foreign_sender: int = 0
    duplicate: int = 0
    reordered: int = 0
    ignored: int = 0  # valid packets with no usable reading (unknown sensors, GPS only)
    dropped_readings: int = 0
    clock_resets: int = 0
    bytes: int = 0
    internal_errors: int = 0  # packets lost to a bug in fusion or the receive path (logged)

    @property
    def rejected(self) -> int:
        return sum(self.malformed.values())

    @property
    def stale(self) -> int:
        return self.duplicate + self.reordered


def parse_allow(spec: str | None) -> Allow:
    """``--allow`` value: None/"" or "first" (the default: lock to the first valid sender),
    "any" (anyone on the network may steer the IMU: an explicit opt-in) or IPs."""
    if not spec or spec.strip().lower() == "first":
        return "first"
    if spec.strip().lower() == "any":
        return None
    return {host.strip() for host in spec.split(",") if host.strip()}


def describe_allow(allow: Allow, locked_sender: str | None = None) -> str:
    """The sender policy in one word, for the health line, the start-up line and the log:
    ``any``, ``first-sender`` (not yet locked), ``192.168.1.23(locked)`` or the allowed IPs."""
    if allow is None:
        return "any"
    if allow == "first":
        return f"{locked_sender}(locked)" if locked_sender else "first-sender"
    return ",".join(sorted(allow))


class PhoneReceiver:
    """UDP phone ingest: ``await start()``, read ``snapshot`` from the control loop, ``await stop()``."""

    def __init__(
        self,
        parser: Parser,
        fusion: Fusion,
        *,
        host: str = "0.0.0.0",
        port: int = 5555,
        allow: Allow = None,
        max_readings: int = 4096,
        clock_window_s: float = 10.0,
        on_event: Callable[..., None] | None = None,
    ):
        self.parser = parser
        self.on_event = on_event or (lambda name, **details: None)
        self.fusion = fusion
        self.host = host
        self.port = port
        self.allow = allow
        self.locked_sender: str | None = None
        self.counters = ReceiverCounters()
        self.clock = ClockOffset(clock_window_s)
        self.snapshot: PhoneSnapshot | None = None
        self._readings: deque[LoggedReading] = deque(maxlen=max_readings)
        self._newest_phone_t: dict[str, float] = {}
        self._newest_any_phone_t: float | None = None
        self._foreign_logged: set[str] = set()
        self._stream: asyncio_dgram.DatagramServer | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ socket lifecycle

    async def start(self) -> tuple[str, int]:
        """Bind the socket and start receiving; returns the bound (host, port)."""
        self._stream = await asyncio_dgram.bind((self.host, self.port))
        self.host, self.port = self._stream.sockname[:2]
        self._task = asyncio.get_running_loop().create_task(self._receive_loop(), name="phone-receiver")
        self._task.add_done_callback(self._task_ended)
        log.info("phone receiver on %s:%d, format %s, allow %s", self.host, self.port, self.parser.name, self.allow)
        return self.host, self.port

    async def stop(self) -> None:
        task, self._task = self._task, None  # cleared first: the end of the task is expected now
        if self._stream is not None:
            self._stream.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self._stream = None

    def _task_ended(self, task: "asyncio.Task[None]") -> None:
        """The receive task ended while it should be running: say so (the loop then goes stale
        and holds still), never let it vanish in silence."""
        if task is not self._task:
            return
        error = None if task.cancelled() else task.exception()
        log.error("phone receiver stopped: %r", error)
        self.on_event("receiver_stopped", error=repr(error))

    async def __aenter__(self) -> "PhoneReceiver":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _receive_loop(self) -> None:
        assert self._stream is not None
        while True:
            try:
                data, addr = await self._stream.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:  # an ICMP error queued on the socket; receiving goes on
                log.debug("phone socket error: %s", exc)
                continue
            try:
                self.handle_datagram(data, addr[0], time.monotonic())
            except Exception as exc:  # a bug on the packet path costs that packet, not the receiver
                self._internal_error("receive", exc)

    def _internal_error(self, where: str, exc: Exception) -> None:
        self.counters.internal_errors += 1
        log.exception("phone receiver: %s failed", where)
        if self.counters.internal_errors <= _MAX_FOREIGN_LOGGED:  # the first few as events; all counted
            self.on_event("receiver_error", where=where, error=repr(exc))

    # ------------------------------------------------------------------ per packet

    def handle_datagram(self, data: bytes, sender_host: str, arrival_mono_s: float) -> None:
        """The whole per-packet path (synchronous, never raises for any input)."""
        counters = self.counters
        if not self._sender_allowed(sender_host):
            counters.foreign_sender += 1
            if len(self._foreign_logged) < _MAX_FOREIGN_LOGGED and sender_host not in self._foreign_logged:
                self._foreign_logged.add(sender_host)
                log.warning("phone packet from %s ignored: not in --allow", sender_host)
            return
        counters.bytes += len(data)
        t0_ns = time.perf_counter_ns()
        try:
            readings = self.parser.parse(data)
        except MalformedPacket as exc:
            counters.malformed[exc.reason] = counters.malformed.get(exc.reason, 0) + 1
            return
        except Exception as exc:  # a parser bug must cost one packet, not the receiver
            reason = f"parser error {type(exc).__name__}"
            counters.malformed[reason] = counters.malformed.get(reason, 0) + 1
            log.exception("phone parser failed on a %d-byte packet", len(data))
            return
        t1_ns = time.perf_counter_ns()
        if self.allow == "first" and self.locked_sender is None:
            self.locked_sender = sender_host
            log.info("phone receiver locked to sender %s", sender_host)
            self.on_event("sender_locked", sender=sender_host)
        if not readings:
            counters.ignored += 1
            return
        fresh, phone_time_s = self._fresh(readings)
        if not fresh:
            return
        try:
            output = self.fusion.update(fresh, arrival_mono_s)
        except Exception as exc:  # fusion state is suspect after a failure: start it over
            self._internal_error("fusion", exc)
            self.fusion.reset()
            return
        t2_ns = time.perf_counter_ns()
        age_ms = None if phone_time_s is None else self.clock.observe(phone_time_s, arrival_mono_s)
        self._keep(fresh, arrival_mono_s)
        counters.accepted += 1
        self.snapshot = PhoneSnapshot(
            seq=counters.accepted,
            arrival_mono_s=arrival_mono_s,
            phone_time_s=phone_time_s,
            quat_wxyz=output.quat_wxyz,
            gyro_torso_rad_s=output.gyro_torso_rad_s,
            parse_us=(t1_ns - t0_ns) * 1e-3,
            fuse_us=(t2_ns - t1_ns) * 1e-3,
            age_at_arrival_ms=age_ms,
            format=self.parser.name,
            source=output.source,
            quat_arrival_mono_s=output.quat_arrival_t,
            gyro_arrival_mono_s=output.gyro_arrival_t,
        )

    def _sender_allowed(self, sender_host: str) -> bool:
        if self.allow is None:
            return True
        if self.allow == "first":
            return self.locked_sender is None or sender_host == self.locked_sender
        return sender_host in self.allow

    def _fresh(self, readings: list[SensorReading]) -> tuple[list[SensorReading], float | None]:
        """Readings newer than the newest of their kind (untimed ones always are).

        Ordering is per sensor kind because apps that send one datagram per sensor event
        (SensaGram) interleave kinds with slightly out-of-order timestamps. A packet with
        nothing new is counted as duplicate (same timestamp) or reordered (older).
        """
        timed = [r.phone_time_s for r in readings if r.phone_time_s is not None]
        packet_t = max(timed) if timed else None
        newest_any = self._newest_any_phone_t
        if packet_t is not None and newest_any is not None and packet_t < newest_any - CLOCK_RESET_S:
            self.counters.clock_resets += 1
            log.warning("phone clock went back %.1f s: stream restarted, clock estimate reset", newest_any - packet_t)
            self._newest_phone_t.clear()
            self.clock.reset()
            newest_any = None
        newest = self._newest_phone_t
        fresh = []
        duplicate = False
        for reading in readings:
            t = reading.phone_time_s
            if t is None:
                fresh.append(reading)
                continue
            last = newest.get(reading.kind)
            if last is None or t > last:
                newest[reading.kind] = t
                fresh.append(reading)
            elif t == last:
                duplicate = True
        if not fresh:
            if duplicate:
                self.counters.duplicate += 1
            else:
                self.counters.reordered += 1
            return fresh, None
        if packet_t is not None and (newest_any is None or packet_t > newest_any):
            self._newest_any_phone_t = packet_t
        fresh_timed = [r.phone_time_s for r in fresh if r.phone_time_s is not None]
        return fresh, (max(fresh_timed) if fresh_timed else None)

    def _keep(self, readings: list[SensorReading], arrival_mono_s: float) -> None:
        """Queue fused readings for the latency log, dropping the oldest when full."""
        queue = self._readings
        for reading in readings:
            if len(queue) == queue.maxlen:
                self.counters.dropped_readings += 1
            queue.append((arrival_mono_s, reading.phone_time_s, reading.kind, reading.values))

    # ------------------------------------------------------------------ for the control loop

    def drain_readings(self) -> list[LoggedReading]:
        """Readings fused since the last call, oldest first (safe from another thread)."""
        queue = self._readings
        out = []
        try:
            while True:
                out.append(queue.popleft())
        except IndexError:
            return out

    def latest_age_ms(self, now_mono_s: float) -> float | None:
        """Age of the newest snapshot's sample at ``now`` (ms); None before the first packet."""
        snapshot = self.snapshot
        return None if snapshot is None else snapshot.age_ms(now_mono_s)

    def health(self, now_mono_s: float) -> str:
        """The phone part of the daemon's health line."""
        c = self.counters
        age = self.latest_age_ms(now_mono_s)
        age_text = "-" if age is None else f"{age:.0f}ms"
        status = getattr(self.parser, "status", None)
        detail = f" ({status})" if status and self.snapshot is None else ""
        errors = f" errors={c.internal_errors}" if c.internal_errors else ""
        return (
            f"rx ok={c.accepted} rejected={c.rejected} foreign={c.foreign_sender} stale={c.stale}{errors} "
            f"age={age_text} fmt={self.parser.name}{detail} from={describe_allow(self.allow, self.locked_sender)}"
        )
