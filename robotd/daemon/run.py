"""Assembles one daemon run: calibration, phone receiver, policy, safety, loop, latency log.

Start-up order matters for safety: the serial handshake happens before anything moves, the
first move is the slow timed move to the nominal pose, and every exit path (duration over,
SIGINT/SIGTERM, an exception) goes through the safety layer's shutdown (safe pose, flush,
close) and closes the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


import robotd
from calibration import Calibration, load_calibration
from policies.baselines import Policy
from robotd.phone.fusion import Fusion
from robotd.logs.latency_log import LatencyLog
from robotd.logs.log_path import check_log_path, claim_log_path
from robotd.daemon.loop import ControlLoop, LoopStats, RecordSink
from robotd.phone.formats import make_parser
from robotd.phone.receiver import PhoneReceiver, describe_allow, parse_allow
from robotd.daemon.policy_select import load_policy, policy_mismatches
from robotd.board.link import SerialLink
from robotd.daemon.safety import Safety
from sim.observation import ObservationSpec


#: What a console event line without details means (the log keeps the bare event name).
CONSOLE_MEANING = {
    "stale": "(no phone data newer than the stale timeout: holding the pose)",
    "fresh": "(phone data fresh again: following the policy)",
}


@dataclass
class RunConfig:
    """Everything ``robotd run`` takes; the CLI fills it from flags."""

    port: str
    udp_host: str = "0.0.0.0"
    udp_port: int = 5555
    phone_format: str = "auto"
    allow: str | None = None  # None/"first": lock to the first sender; "any": anyone; else comma-separated IPs
    policy: str = "pd"
    rate_hz: float = 50.0
    log_path: str | None = None  # None: no log; the CLI picks a fresh timestamped name by default
    # A log_path ending in .zst is zstd-compressed.
    log_max_mb: float | None = None  # rotate into numbered files past this size
    foxglove: tuple[str, int] | None = None  # stream live to Foxglove from a WebSocket server here
    duration_s: float | None = None
    calibration_path: str | None = None
    stale_timeout_ms: float | None = None
    rearm_after_s: float = 0.0
    handshake_timeout_s: float = 1.0
    baudrate: int = 115200
    health_period_s: float = 2.0
    stop_on_fall: bool = False  # end the run at a fall (in the safe pose), as a tuning trial does


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
    time_following_s: float  # the policy's action was sent (NaN-guarded ticks not included)
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
    packets_internal_errors: int = 0  # lost to a bug in fusion or the receive path
    log_records_dropped: int = 0  # latency-log records lost (queue full, full disk, bad record)
    log_error: str | None = None  # the last reason the log writer lost records
    nan_guarded_ticks: int = 0  # ticks where safety held because the action was non-finite
    refused_outputs: int = 0  # policy outputs outside their contract (non-finite, > 1, misshapen): held
    stopped_early: str | None = None  # why the run ended before its time (None: duration or signal)
    stop_reason: str = "duration"  # duration | signal | fall (stop_on_fall) | stopped_early | error

    def lines(self) -> list[str]:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"
        return [
            f"ran {self.duration_s:.1f} s: {self.ticks} ticks at {self.achieved_hz:.1f}/{self.target_hz:g} Hz, "
            f"{self.overruns} overruns ({self.missed_slots} slots missed)",
            f"followed the policy {self.time_following_s:.1f} s, held by the NaN guard {self.nan_guarded_ticks} ticks, "
            f"falls {self.falls}, policy errors {self.policy_errors}, outputs refused {self.refused_outputs}",
            f"phone packets accepted {self.packets_accepted}, rejected {self.packets_rejected} "
            f"(malformed {sum(self.packets_malformed.values())}, foreign {self.packets_foreign}), "
            f"stale {self.packets_stale}, ignored {self.packets_ignored}",
            f"tick_us p50 {us(self.tick_us_p50)} p99 {us(self.tick_us_p99)} max {us(self.tick_us_max)}; "
            f"rx_to_tx_us p50 {us(self.rx_to_tx_us_p50)} p99 {us(self.rx_to_tx_us_p99)}",
            f"serial {self.serial_bytes} bytes, {self.reconnects} reconnects",
        ] + ([f"STOPPED EARLY: {self.stopped_early}"] if self.stopped_early else []) + (
            ["stopped by a signal (Ctrl-C or SIGTERM): the robot was sent to the safe pose"]
            if self.stop_reason == "signal" else []) + (
            [f"LATENCY LOG INCOMPLETE: {self.log_records_dropped} records dropped ({self.log_error})"]
             if self.log_records_dropped else []) + (
            [f"phone receiver internal errors {self.packets_internal_errors} (see the log's receiver_error events)"]
            if self.packets_internal_errors else [])


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
            f"{loop.receiver.health(now_s)} | serial {bps:.0f} B/s | reconnects {link.reconnects} | "
            f"{loop.log.health() if loop.log is not None else 'log off'}",
            file=self.out,
            flush=True,
        )


def _header(cfg: RunConfig, prepared: "PreparedRun", spec: ObservationSpec) -> dict[str, Any]:
    cal, policy = prepared.calibration, prepared.policy
    return {
        "robotd_version": robotd.__version__,
        "started_unix": time.time(),
        "started_monotonic": time.monotonic(),  # with started_unix: the loop's clock as wall time
        "calibration": {"path": cal.path, "identity": cal.identity},
        "policy": {"name": policy.name, "identity": policy.identity, "spec": cfg.policy,
                   "mismatches": list(prepared.policy_mismatches)},
        "rate_hz": cfg.rate_hz,
        "phone_format": cfg.phone_format,
        "port": cfg.port,
        "udp": f"{cfg.udp_host}:{cfg.udp_port}",
        "phone_senders": describe_allow(parse_allow(cfg.allow)),
        "observation": spec.to_dict(),
        "joint_names": list(cal.joint_names),
        "channels": cal.channels.tolist(),
        "config": asdict(cfg),
    }


@dataclass(frozen=True)
class PreparedRun:
    """What a run needs that can be wrong in a file: checked before anything starts."""

    calibration: Calibration
    policy: Policy
    policy_mismatches: tuple[str, ...] = ()  # where policy and calibration disagree (not errors)


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """Load and validate the calibration and the policy, check the log path and the phone's address.

    Every start path (hardware, ``--port sim``) calls this first, so a bad file or address gives
    the same one-line error before a port is opened, a process started or a file touched.
    """
    cal = load_calibration(cfg.calibration_path)
    policy = load_policy(cfg.policy, cal, warn=False)
    if cfg.log_path:
        check_log_path(cfg.log_path, rotating=cfg.log_max_mb is not None)
    check_udp_address(cfg.udp_host, cfg.udp_port)
    return PreparedRun(cal, policy, tuple(policy_mismatches(policy, cal)))


def check_udp_address(host: str, port: int) -> None:
    """Raise ValueError naming ``--udp`` if the phone's socket cannot be bound at host:port.

    Binds a socket there and closes it: an unknown host or a port in use is then named before
    the serial handshake, not as a bare ``[Errno 98]`` after it.
    """
    where = f"--udp {host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"{where}: unknown host ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(f"{where}: cannot listen there ({exc.strerror})") from None


async def run_daemon(cfg: RunConfig, out: TextIO = sys.stderr, prepared: PreparedRun | None = None) -> RunSummary:
    """Run the daemon until the duration passes or a signal arrives; always ends in the safe pose."""
    # The phone receiver, the log writer and (under --port sim) nothing else share the GIL with
    # the loop: a 1 ms switch interval bounds how long they can hold a tick back (default 5 ms).
    sys.setswitchinterval(0.001)
    prepared = prepared or prepare_run(cfg)
    cal, policy = prepared.calibration, prepared.policy
    spec = policy.spec
    header = _header(cfg, prepared, spec)  # the log's and the live stream's (one clock for both)
    log: LatencyLog | None = None
    live: Any = None  # robotd.logs.foxglove_live.FoxgloveLive under --foxglove
    early_events: list[tuple[str, dict[str, Any]]] = []  # before the log exists (handshake)
    fatal: list[str] = []  # why the run had to stop early (the phone receiver died)
    stop = asyncio.Event()
    stop_reason = "signal"  # what setting ``stop`` means unless a fall or a fatal event set it

    def on_event(name: str, **details: Any) -> None:
        nonlocal stop_reason
        if name == "fall" and cfg.stop_on_fall and not stop.is_set():
            stop_reason = "fall"
            stop.set()
        if log is not None:
            log.event(name, **details)
        else:
            early_events.append((name, details))
        if live is not None:
            live.event(name, **details)
        if name == "receiver_stopped":
            # No phone data can ever arrive again: holding forever would look alive and do
            # nothing. End the run the safe way (safe pose) and say why.
            fatal.append(f"the phone receiver stopped ({details.get('error')}); robot sent to the safe pose")
            stop_reason = "stopped_early"
            stop.set()
        if name in ("serial_lost", "serial_reconnected", "handshake", "fall", "rearmed", "stale", "fresh",
                    "sender_locked", "receiver_error", "receiver_stopped", "policy_mismatch"):
            detail = " ".join(f"{k}={v}" for k, v in details.items()) or CONSOLE_MEANING.get(name, "")
            print(f"[robotd] {name} {detail}".rstrip(), file=out, flush=True)

    link = SerialLink(cfg.port, baudrate=cfg.baudrate, handshake_timeout_s=cfg.handshake_timeout_s, on_event=on_event)
    safety = Safety(cal, link, cfg.rate_hz, stale_timeout_ms=cfg.stale_timeout_ms,
                    rearm_after_s=cfg.rearm_after_s, on_event=on_event)
    receiver = PhoneReceiver(make_parser(cfg.phone_format), Fusion(cal), host=cfg.udp_host, port=cfg.udp_port,
                             allow=parse_allow(cfg.allow), on_event=on_event)
    loop = asyncio.get_running_loop()
    for problem in prepared.policy_mismatches:  # into the log (as early events) and onto the console
        on_event("policy_mismatch", problem=problem)
    installed: list[int] = []
    for sig, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set), (signal.SIGUSR1, safety.request_rearm)):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests) or no signals here
            pass

    control: ControlLoop | None = None  # built once its record sink exists
    started = time.monotonic()
    ended = "error"
    try:
        if cfg.foxglove is not None:  # first: a port that cannot be bound stops the run before the board
            from robotd.logs.foxglove_live import FoxgloveLive, RecordFanout

            live = FoxgloveLive(*cfg.foxglove, header)
            print(f"[robotd] foxglove: ws://{live.host}:{live.port} (Foxglove: Open connection)",
                  file=out, flush=True)
        safety.open()
        on_event("handshake_ok", port=cfg.port)
        try:
            host, port = await receiver.start()
        except OSError as exc:  # taken since prepare_run checked it
            raise OSError(f"--udp {cfg.udp_host}:{cfg.udp_port}: cannot listen there ({exc.strerror})") from None
        if cfg.log_path:
            # Only now, with the board answering and the socket bound, does a log file appear:
            # a run that cannot start leaves every existing file as it was.
            log = LatencyLog(claim_log_path(cfg.log_path), header,
                             max_bytes=int(cfg.log_max_mb * 1e6) if cfg.log_max_mb else None)
            for name, details in early_events:
                log.event(name, **details)
        # The loop puts each record to the log and the live stream alike.
        sink: RecordSink | None = RecordFanout(log, live) if live is not None else log
        control = ControlLoop(receiver, policy, safety, spec, cal.nominal_rad, cfg.rate_hz, sink,
                              health=HealthPrinter(out, cfg.rate_hz), health_period_s=cfg.health_period_s)
        fmt = "any supported format (auto-detect)" if cfg.phone_format == "auto" else cfg.phone_format
        print(f"[robotd] listening for {fmt} on udp {host}:{port} "
              f"(senders: {describe_allow(receiver.allow)}), "
              f"policy {policy.identity}, {cfg.rate_hz:g} Hz, board {cfg.port}", file=out, flush=True)
        print(f"[robotd] calibration {cal.path}; latency log: {cfg.log_path if log is not None else 'off'}",
              file=out, flush=True)
        if signal.SIGUSR1 in installed:  # the operator's commands, with the pid filled in: no pgrep
            pid = os.getpid()
            print(f"[robotd] pid {pid}: after a fall, re-arm with `kill -USR1 {pid}`; stop with Ctrl-C or "
                  f"`kill {pid}` (safe pose)", file=out, flush=True)
        await control.run(stop, cfg.duration_s)
        ended = stop_reason if stop.is_set() else "duration"
    finally:
        if stop.is_set() and stop_reason == "signal":
            on_event("signal")
        try:
            safety.shutdown()
        finally:
            await receiver.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            stats = control.stats if control is not None else LoopStats()  # none: it never started
            summary = _summary(stats, receiver, safety, cfg, log, time.monotonic() - started)
            summary.stopped_early = fatal[0] if fatal else None
            summary.stop_reason = ended
            if log is not None:
                log.close(asdict(summary))
                # What the final flush lost cannot be in the log's own summary line: print it.
                summary.log_records_dropped, summary.log_error = log.dropped, log.last_error
            if live is not None:
                live.close(asdict(summary))
    return summary


def _summary(stats: LoopStats, receiver: PhoneReceiver, safety: Safety, cfg: RunConfig,
             log: LatencyLog | None, duration_s: float) -> RunSummary:
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
        time_following_s=stats.following_ticks / cfg.rate_hz,
        nan_guarded_ticks=stats.nan_guarded_ticks,
        refused_outputs=stats.refused_outputs,
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
        packets_internal_errors=rx.internal_errors,
        log_records_dropped=log.dropped if log is not None else 0,
        log_error=log.last_error if log is not None else None,
    )


def write_summary(summary: RunSummary, out: TextIO) -> None:
    for line in summary.lines():
        print(line, file=out)
