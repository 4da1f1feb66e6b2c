"""The robot as the calibration procedures see it: the board through Safety, the phone's readings.

``board_session`` opens the board (starting the simulated robot first for ``--port sim``,
exactly as ``robotd run --port sim`` does) and always ends with the safety layer's
shutdown (a timed move to the safe pose, flushed before the port closes) or the ending the
procedure names, whether it finished, failed or was interrupted with Ctrl-C. ``PhoneRecorder`` runs the
daemon's own ``PhoneReceiver`` + ``Fusion`` and keeps every reading it fused.
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from calibration import Calibration
from robotd.phone.fusion import Fusion
from robotd.phone.formats import make_parser
from robotd.phone.receiver import LoggedReading, PhoneReceiver, parse_allow
from robotd.board.link import SerialLink
from robotd.daemon.safety import Safety


@dataclass
class RobotOptions:
    """The connection part of the command line."""

    port: str
    calibration_path: str
    udp_host: str = "0.0.0.0"
    udp_port: int = 5555
    phone_format: str = "auto"
    allow: str | None = None
    baudrate: int = 115200
    handshake_timeout_s: float = 1.0
    sim_seed: int = 0
    sim_mount_error_rad: tuple[float, float, float] | None = None
    sim_gyro_bias_rad_s: tuple[float, float, float] | None = None

    @property
    def is_sim(self) -> bool:
        return self.port == "sim"


@dataclass
class BoardSession:
    safety: Safety
    options: RobotOptions
    udp_host: str
    phone_format: str
    allow: str | None
    sim: Any = None  # SimulatedRobotProcess under --port sim

    def startup(self) -> float:
        """Move every joint to the nominal pose as one slow timed move; returns its duration (s)."""
        self.safety.jog({})
        return self.safety.cal.startup_move_ms / 1000.0


@contextmanager
def board_session(options: RobotOptions, cal: Calibration, out: TextIO = sys.stderr, *,
                  ending: Callable[[Safety], object] = Safety.shutdown) -> Iterator[BoardSession]:
    """Open the board (and the simulated robot); always end with ``ending`` (default: the safe pose).

    Trim passes a shutdown through the calibration as saved; ``calibrate center`` passes
    ``Safety.close``, so the servos keep their 1500 us while the horns go on.
    """
    sim = None
    port, udp_host, allow = options.port, options.udp_host, options.allow
    phone_format = options.phone_format
    if options.is_sim:
        from robotd.commands.simrun import SIM_UDP_HOST, start_simulated_robot

        udp_host = SIM_UDP_HOST
        allow = allow or udp_host
        sim, phone_format = start_simulated_robot(
            options.udp_port, phone_format, options.calibration_path, out, "calibrate", seed=options.sim_seed,
            phone_mount_error_rad=options.sim_mount_error_rad, phone_gyro_bias_rad_s=options.sim_gyro_bias_rad_s,
            # Calibrating means holding the robot still: a taut string and no pushes.
            string_slack_m=0.0, pushes=None)
        port = sim.board_path
    try:
        def on_event(name: str, **details: Any) -> None:
            if name in ("serial_lost", "serial_reconnected", "handshake"):
                detail = " ".join(f"{k}={v}" for k, v in details.items())
                print(f"[calibrate] {name} {detail}".rstrip(), file=out, flush=True)

        link = SerialLink(port, baudrate=options.baudrate, handshake_timeout_s=options.handshake_timeout_s,
                          on_event=on_event)
        safety = Safety(cal, link, 50.0, on_event=on_event)
        safety.open()
        try:
            yield BoardSession(safety, options, udp_host, phone_format, allow, sim)
        finally:
            ending(safety)  # flushed, port closed: on success, error and Ctrl-C alike
    finally:
        if sim is not None:
            try:
                sim.stop()
            except Exception:
                sim.kill()


@dataclass
class PhoneRecorder:
    """The daemon's phone ingest, keeping every fused reading ``(arrival, phone_t, kind, values)``."""

    session: BoardSession
    cal: Calibration
    readings: list[LoggedReading] = field(default_factory=list)
    receiver: PhoneReceiver | None = None

    async def __aenter__(self) -> "PhoneRecorder":
        opts = self.session.options
        self.receiver = PhoneReceiver(make_parser(self.session.phone_format), Fusion(self.cal),
                                      host=self.session.udp_host, port=opts.udp_port,
                                      allow=parse_allow(self.session.allow), max_readings=1 << 16)
        await self.receiver.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.receiver is not None:
            self.collect()
            await self.receiver.stop()

    def collect(self) -> list[LoggedReading]:
        """Move the receiver's new readings into :attr:`readings`; returns the new ones."""
        assert self.receiver is not None
        new = self.receiver.drain_readings()
        self.readings.extend(new)
        return new

    async def sleep(self, seconds: float) -> None:
        """Wait while receiving (the receiver runs on this event loop), collecting as we go."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 0.05))
            self.collect()
        self.collect()

    async def wait_for_phone(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(r[2] == "gyro" for r in self.readings):
            if time.monotonic() > deadline:
                host, port = self.session.udp_host, self.session.options.udp_port
                raise RuntimeError(f"no phone gyro readings on udp {host}:{port} within {timeout_s:g} s "
                                   f"(format {self.session.phone_format}; is the app streaming here?)")
            await self.sleep(0.05)

    def series(self, kind: str, since_arrival_s: float = -np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival_s, phone_time_s (NaN when untimed), values (N, k)) of one reading kind."""
        rows = [r for r in self.readings if r[2] == kind and r[0] >= since_arrival_s]
        arrival = np.array([r[0] for r in rows], dtype=np.float64)
        phone_t = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        values = np.array([r[3][:3] for r in rows], dtype=np.float64).reshape(len(rows), 3)
        return arrival, phone_t, values


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
