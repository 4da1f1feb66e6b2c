"""Assembles one daemon run: calibration, phone receiver, policy, safety, loop, latency log.

Start-up order matters for safety: the serial handshake happens before anything moves, the
first move is the slow timed move to the nominal pose, and every exit path (duration over,
SIGINT/SIGTERM, an exception) goes through the safety layer's shutdown (safe pose, flush,
close) and closes the log.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


import robotd
from calibration import Calibration, load_calibration
from policies.baselines import Policy
from robotd.fusion import Fusion
from robotd.latency_log import LatencyLog
from robotd.loop import ControlLoop
from robotd.phone.formats import make_parser
from robotd.phone.receiver import PhoneReceiver, parse_allow
from robotd.policy_select import load_policy
from robotd.safety import Safety
from sim.observation import ObservationSpec


@dataclass
class RunConfig:
    """Everything ``robotd run`` takes; the CLI fills it from flags."""

    port: str
    udp_host: str = "0.0.0.0"
    udp_port: int = 5555
    phone_format: str = "auto"
    allow: str | None = None  # None: anyone; "first": lock to the first sender; else comma-separated IPs
    policy: str = "pd"
    rate_hz: float = 50.0
    log_path: str | None = "latency.log"  # ending in .zst: zstd-compressed
    log_max_mb: float | None = None  # rotate into numbered files past this size
    foxglove: tuple[str, int] | None = None  # stream live to Foxglove from a WebSocket server here
    duration_s: float | None = None
    calibration_path: str | None = None
    stale_timeout_ms: float | None = None
    rearm_after_s: float = 0.0
    handshake_timeout_s: float = 1.0
    baudrate: int = 115200
    health_period_s: float = 2.0


@dataclass
class RunSummary:
    """How the run went; printed at the end and written as the log's last line."""

    duration_s: float
    ticks: int
    achieved_hz: float
    target_hz: float
    overruns: int
    missed_slots: int
    packets_accepted: int
    packets_rejected: int  # malformed + foreign
    falls: int
    time_following_s: float
    tick_us_p50: float | None
    tick_us_p99: float | None
    tick_us_max: float | None
    rx_to_tx_us_p50: float | None
    rx_to_tx_us_p99: float | None
    serial_bytes: int
    reconnects: int
    policy_errors: int
    # The receiver's other counters, so every datagram that reached the socket is accounted
    # for: accepted + malformed + foreign + stale (duplicate/reordered) + ignored.
    packets_malformed: dict[str, int] = field(default_factory=dict)  # by reason
    packets_foreign: int = 0
    packets_stale: int = 0
    packets_ignored: int = 0

    def lines(self) -> list[str]:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"
        return [
            f"ran {self.duration_s:.1f} s: {self.ticks} ticks at {self.achieved_hz:.1f}/{self.target_hz:g} Hz, "
            f"{self.overruns} overruns ({self.missed_slots} slots missed)",
            f"followed the policy {self.time_following_s:.1f} s, falls {self.falls}, policy errors {self.policy_errors}",
            f"phone packets accepted {self.packets_accepted}, rejected {self.packets_rejected} "
            f"(malformed {sum(self.packets_malformed.values())}, foreign {self.packets_foreign}), "
            f"stale {self.packets_stale}, ignored {self.packets_ignored}",
            f"tick_us p50 {us(self.tick_us_p50)} p99 {us(self.tick_us_p99)} max {us(self.tick_us_max)}; "
            f"rx_to_tx_us p50 {us(self.rx_to_tx_us_p50)} p99 {us(self.rx_to_tx_us_p99)}",
            f"serial {self.serial_bytes} bytes, {self.reconnects} reconnects",
        ]


class HealthPrinter:
    """Prints the health line: achieved rate, missed deadlines, packets, age, serial, reconnects."""

    def __init__(self, out: TextIO, rate_hz: float):
        self.out = out
        self.rate_hz = rate_hz
        self._last_ticks = 0
        self._last_bytes = 0
        self._last_s: float | None = None

    def __call__(self, loop: ControlLoop, now_s: float) -> None:
        stats = loop.stats
        since = now_s - (self._last_s if self._last_s is not None else stats.started_s)
        rate = (stats.ticks - self._last_ticks) / since if since > 0 else 0.0
        bps = (stats.bytes_written - self._last_bytes) / since if since > 0 else 0.0
        self._last_ticks, self._last_bytes, self._last_s = stats.ticks, stats.bytes_written, now_s
        link = loop.safety.link_counters
        print(
            f"[robotd] {loop.safety.mode:8s} rate {rate:5.1f}/{self.rate_hz:g} Hz | missed {stats.overruns} | "
            f"{loop.receiver.health(now_s)} | serial {bps:.0f} B/s | reconnects {link.reconnects}",
            file=self.out,
            flush=True,
        )


def _header(cfg: RunConfig, cal: Calibration, policy: Policy, spec: ObservationSpec) -> dict[str, Any]:
    return {
        "robotd_version": robotd.__version__,
        "started_unix": time.time(),
        "started_monotonic": time.monotonic(),  # with started_unix: the loop's clock as wall time
        "calibration": {"path": cal.path, "identity": cal.identity},
        "policy": {"name": policy.name, "identity": policy.identity, "spec": cfg.policy},
        "rate_hz": cfg.rate_hz,
        "phone_format": cfg.phone_format,
        "port": cfg.port,
        "udp": f"{cfg.udp_host}:{cfg.udp_port}",
        "observation": spec.to_dict(),
        "joint_names": list(cal.joint_names),
        "channels": cal.channels.tolist(),
        "config": asdict(cfg),
    }


async def run_daemon(cfg: RunConfig, out: TextIO = sys.stderr) -> RunSummary:
    """Run the daemon until the duration passes or a signal arrives; always ends in the safe pose."""
    # The phone receiver, the log writer and (under --port sim) nothing else share the GIL with
    # the loop: a 1 ms switch interval bounds how long they can hold a tick back (default 5 ms).
    sys.setswitchinterval(0.001)
    cal = load_calibration(cfg.calibration_path)
    policy = load_policy(cfg.policy, cal)
    spec = policy.spec
    header = _header(cfg, cal, policy, spec)
    live = None
    if cfg.foxglove is not None:  # first: a port that cannot be bound must not leave a log behind
        from robotd.foxglove_live import FoxgloveLive, RecordFanout

        live = FoxgloveLive(*cfg.foxglove, header)
        print(f"[robotd] foxglove: ws://{live.host}:{live.port} (Foxglove: Open connection)", file=out, flush=True)
    log = LatencyLog(cfg.log_path, header,
                     max_bytes=int(cfg.log_max_mb * 1e6) if cfg.log_max_mb else None) if cfg.log_path else None
    if live is not None:
        log = RecordFanout(log, live)  # type: ignore[assignment]  # the loop puts each record to both

    def on_event(name: str, **details: Any) -> None:
        if log is not None:
            log.event(name, **details)
        if name in ("serial_lost", "serial_reconnected", "handshake", "fall", "rearmed", "stale", "fresh"):
            detail = " ".join(f"{k}={v}" for k, v in details.items())
            print(f"[robotd] {name} {detail}".rstrip(), file=out, flush=True)

    safety = Safety(cal, cfg.port, cfg.rate_hz, stale_timeout_ms=cfg.stale_timeout_ms,
                    rearm_after_s=cfg.rearm_after_s, baudrate=cfg.baudrate,
                    handshake_timeout_s=cfg.handshake_timeout_s, on_event=on_event)
    receiver = PhoneReceiver(make_parser(cfg.phone_format), Fusion(cal), host=cfg.udp_host, port=cfg.udp_port,
                             allow=parse_allow(cfg.allow))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set), (signal.SIGUSR1, safety.request_rearm)):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests) or no signals here
            pass

    control = ControlLoop(receiver, policy, safety, spec, cal.nominal_rad, cfg.rate_hz, log,
                          health=HealthPrinter(out, cfg.rate_hz), health_period_s=cfg.health_period_s)
    started = time.monotonic()
    try:
        safety.open()
        on_event("handshake_ok", port=cfg.port)
        host, port = await receiver.start()
        print(f"[robotd] listening for {cfg.phone_format} on udp {host}:{port}, "
              f"policy {policy.identity}, {cfg.rate_hz:g} Hz, board {cfg.port}", file=out, flush=True)
        await control.run(stop, cfg.duration_s)
    finally:
        if stop.is_set():
            on_event("signal")
        try:
            safety.shutdown()
        finally:
            await receiver.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            summary = _summary(control, receiver, safety, cfg, time.monotonic() - started)
            if log is not None:
                log.close(asdict(summary))
    return summary


def _summary(control: ControlLoop, receiver: PhoneReceiver, safety: Safety, cfg: RunConfig,
             duration_s: float) -> RunSummary:
    stats = control.stats
    rx = receiver.counters
    return RunSummary(
        duration_s=duration_s,
        ticks=stats.ticks,
        achieved_hz=stats.achieved_hz(time.monotonic()),
        target_hz=cfg.rate_hz,
        overruns=stats.overruns,
        missed_slots=stats.missed_slots,
        packets_accepted=rx.accepted,
        packets_rejected=rx.rejected + rx.foreign_sender,
        falls=safety.counters.falls,
        time_following_s=stats.upright_ticks / cfg.rate_hz,
        tick_us_p50=stats.tick_us.percentile(50),
        tick_us_p99=stats.tick_us.percentile(99),
        tick_us_max=stats.tick_us.max_us if stats.tick_us.n else None,
        rx_to_tx_us_p50=stats.rx_to_tx_us.percentile(50),
        rx_to_tx_us_p99=stats.rx_to_tx_us.percentile(99),
        serial_bytes=stats.bytes_written,
        reconnects=safety.link_counters.reconnects,
        policy_errors=stats.policy_errors,
        packets_malformed=dict(rx.malformed),
        packets_foreign=rx.foreign_sender,
        packets_stale=rx.stale,
        packets_ignored=rx.ignored,
    )


def write_summary(summary: RunSummary, out: TextIO) -> None:
    for line in summary.lines():
        print(line, file=out)
