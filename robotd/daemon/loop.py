"""The fixed-rate control loop: read snapshot -> safety mode -> policy -> safety send -> log.

Ticks run on absolute deadlines (``start + k / rate``). A tick that finds its deadline
already passed by a whole period counts an overrun and moves the next deadline forward to
the next future slot: stacked-up commands are never sent in a burst. The loop never waits
for a packet or for the serial port: it reads the receiver's newest snapshot (a plain
attribute read) and the link's writes are non-blocking.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from policies.baselines import Policy
from robotd.phone.receiver import PhoneReceiver
from robotd.daemon.policy_tick import PolicyStep, PolicyTick
from robotd.daemon.safety import CommandResult, Mode, Safety, TickFlag
from sim.observation import ObservationSpec


class LatencyHistogram:
    """Percentiles of a latency over a run of any length, in constant memory.

    Log-spaced bins from 1 µs to 10 s, 1 % wide: a percentile is exact to within 1 %, and a
    daemon that runs for days does not grow (a list of every tick's value grew ~50 kB/min).
    The maximum is kept exactly.
    """

    _LOG_MIN, _LOG_MAX, _BINS_PER_DECADE = 0.0, 7.0, 232  # 10 ** (1 / 232) = 1.0100

    def __init__(self) -> None:
        self._counts = np.zeros(int((self._LOG_MAX - self._LOG_MIN) * self._BINS_PER_DECADE) + 1, dtype=np.int64)
        self.n = 0
        self.max_us = 0.0

    def add(self, value_us: float) -> None:
        log_value = math.log10(value_us) if value_us > 1.0 else 0.0
        index = min(int((log_value - self._LOG_MIN) * self._BINS_PER_DECADE), len(self._counts) - 1)
        self._counts[index] += 1
        self.n += 1
        self.max_us = max(self.max_us, value_us)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (upper edge of its bin, never above the maximum); None if empty."""
        if not self.n:
            return None
        index = int(np.searchsorted(np.cumsum(self._counts), math.ceil(q / 100.0 * self.n)))
        if index >= len(self._counts) - 1:  # the overflow bin (> 10 s): only the maximum is known
            return self.max_us
        return min(10 ** (self._LOG_MIN + (index + 1) / self._BINS_PER_DECADE), self.max_us)


class RecordSink(Protocol):
    """Where the loop puts each tick's record and its events: the latency log, or the log and the
    live stream together (``robotd.logs.foxglove_live.RecordFanout``). ``put`` must not block."""

    def put(self, record: Mapping[str, Any]) -> None: ...

    def event(self, name: str, **details: Any) -> None: ...

    def health(self) -> str: ...


@dataclass
class LoopStats:
    """Health of the loop: achieved rate and missed deadlines, as Microduck's robotd reports."""

    ticks: int = 0
    overruns: int = 0
    missed_slots: int = 0
    policy_errors: int = 0
    started_s: float = 0.0
    bytes_written: int = 0
    following_ticks: int = 0  # safety in "run" and the policy's action sent
    nan_guarded_ticks: int = 0  # safety in "run" but the action was non-finite: held instead
    refused_outputs: int = 0  # policy outputs outside their contract (non-finite, > 1, misshapen): held
    tick_us: LatencyHistogram = field(default_factory=LatencyHistogram)
    rx_to_tx_us: LatencyHistogram = field(default_factory=LatencyHistogram)

    def achieved_hz(self, now_s: float) -> float:
        elapsed = now_s - self.started_s
        return self.ticks / elapsed if elapsed > 0 else 0.0


class ControlLoop:
    """One daemon's loop. ``run`` returns when ``stop`` is set or ``duration_s`` has passed."""

    def __init__(self, receiver: PhoneReceiver, policy: Policy, safety: Safety, spec: ObservationSpec,
                 nominal_rad: np.ndarray, rate_hz: float, log: RecordSink | None,
                 health: Callable[["ControlLoop", float], None] | None = None, health_period_s: float = 2.0):
        self.receiver = receiver
        self.policy = policy
        self.safety = safety
        self.spec = spec
        self.nominal_rad = nominal_rad
        self.period_s = 1.0 / rate_hz
        self.log = log
        self.health = health
        self.health_period_s = health_period_s
        self.stats = LoopStats()
        self.policy_tick = PolicyTick(policy, spec, on_error=self._policy_error, on_refused=self._refused_output)

    def _policy_error(self, exc: Exception) -> None:
        self.stats.policy_errors += 1
        if self.log is not None:
            self.log.event("policy_error", error=repr(exc))

    def _refused_output(self, problem: str) -> None:
        self.stats.refused_outputs += 1
        if self.log is not None:
            self.log.event("policy_output_refused", problem=problem)

    def _commanded_action(self) -> np.ndarray:
        """The pose the servos are commanded to, as an action: the history's start when control begins."""
        return self.spec.pose_action(self.safety.commanded_rad, self.nominal_rad)

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> LoopStats:
        start = time.monotonic()
        self.stats.started_s = start
        end = start + duration_s if duration_s else math.inf
        deadline = start
        next_health = start + self.health_period_s
        seq = 0
        while not stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            if deadline > now:
                await asyncio.sleep(deadline - now)
                if stop.is_set():
                    break
            record = self.tick(seq, deadline)
            seq += 1
            deadline += self.period_s
            now = time.monotonic()
            if now > deadline:  # overran into the next slot: count it, skip ahead, never burst
                skipped = int((now - deadline) // self.period_s) + 1
                deadline += skipped * self.period_s
                self.stats.overruns += 1
                self.stats.missed_slots += skipped
                record["flags"].append(TickFlag.OVERRUN)
            if self.log is not None:
                self.log.put(record)
            if now >= next_health and self.health is not None:
                self.health(self, now)
                next_health = now + self.health_period_s
            await asyncio.sleep(0)  # let the receiver run even when ticks are back to back
        return self.stats

    def tick(self, seq: int, deadline: float) -> dict[str, Any]:
        """One read -> update -> write cycle; returns its latency-log record."""
        t_start = time.monotonic()
        snap = self.receiver.snapshot
        quat = snap.quat_wxyz if snap is not None else None
        gyro = snap.gyro_torso_rad_s if snap is not None else None
        readings = self.receiver.drain_readings()

        age_ms = snap.age_ms(t_start) if snap is not None else None

        # The mode first: the policy runs only on ticks that follow it, and starts fresh on the
        # first of them (robotd/daemon/policy_tick.py has the order, shared with the re-run).
        decision = self.safety.decide(quat, age_ms, t_start)
        p0 = time.perf_counter()
        step = self.policy_tick.step(decision.mode is Mode.RUN, quat, gyro, self._commanded_action)
        p1 = time.perf_counter()
        action = step.action
        # A non-finite action gives a NaN frame, which the safety layer holds (servo_command.holds_frame).
        targets = self.spec.targets_rad(action, self.nominal_rad) if action is not None else None
        result = self.safety.send(decision, targets)

        tick_us = (result.tx_done_s - t_start) * 1e6
        rx_to_tx_us = (result.tx_done_s - snap.arrival_mono_s) * 1e6 if snap is not None else None
        self.stats.ticks += 1
        self.stats.bytes_written += result.bytes_written
        following = result.mode is Mode.RUN
        guarded = following and TickFlag.NAN in result.flags  # the NaN guard held instead of following
        self.stats.following_ticks += following and not guarded
        self.stats.nan_guarded_ticks += guarded
        self.stats.tick_us.add(tick_us)
        if rx_to_tx_us is not None:
            self.stats.rx_to_tx_us.add(rx_to_tx_us)
        return self._record(seq, t_start, deadline, snap, step, targets, result, tick_us, rx_to_tx_us,
                            (p1 - p0) * 1e6, readings)

    def _record(self, seq: int, t_start: float, deadline: float, snap: Any, step: PolicyStep,
                targets: np.ndarray | None, result: CommandResult, tick_us: float, rx_to_tx_us: float | None, policy_us: float,
                readings: list) -> dict[str, Any]:
        return {
            "type": "loop",
            "seq": seq,
            "t": t_start,
            "deadline": deadline,
            "pkt_age_ms": snap.age_ms(t_start) if snap is not None else None,
            "stages_us": {
                "parse": snap.parse_us if snap is not None else None,
                "fuse": snap.fuse_us if snap is not None else None,
                "policy": policy_us,
                "safety": result.safety_us,
                "encode": result.encode_us,
                "write": result.write_us,
            },
            "tick_us": tick_us,
            "rx_to_tx_us": rx_to_tx_us,
            "quat": snap.quat_wxyz if snap is not None else None,
            "gyro": snap.gyro_torso_rad_s if snap is not None else None,
            "action": step.action,  # None: the policy was not called (not a run tick)
            "reset_action": step.reset_action,  # the history's fill on the tick the policy was reset
            "targets_rad": targets,
            "pulses_us": {str(ch): p for ch, p in result.pulses_us.items()},
            "bytes": result.bytes_written,
            "mode": result.mode,
            "flags": result.flags,
            "rx": readings,
        }
