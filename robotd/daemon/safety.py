"""The safety layer: the only component that can command a servo.

``Safety`` owns the link to the board (:class:`robotd.board.io.BoardIo`: the serial link in
the daemon, an in-memory fake in the rules' unit tests) and nobody else writes to it, so
every pulse that reaches the board has gone through it. Each tick has two halves:
:meth:`Safety.decide` takes the phone snapshot and settles the tick's mode before any
policy runs (the control loop consults the policy on ``run`` ticks only), then
:meth:`Safety.send` takes the policy's joint targets and does what was decided:

* ``startup``  — the first move goes to the nominal pose as one timed group move
  (``T<ms>``): MG996Rs report no position, so a snap from an unknown pose is avoided.
* ``run``      — follow the targets: NaN/inf frames rejected, each joint slew-limited
  and clamped to its calibrated limits, only channels that moved more than the deadband
  are sent.
* ``hold``     — the phone data is stale (or absent): keep the last commanded pose.
  Resuming is slew-limited from there, so it is smooth.
* ``fallen``   — the torso tilted beyond the threshold for N ticks: a timed move to the
  safe pose, then nothing until re-armed. Stop is not limp: the servos hold that pose.
* ``shutdown`` — a timed move to the safe pose, written before the port is closed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Callable

import numpy as np

from calibration import Calibration
from robotd.board.io import BoardIo
from robotd.board.link import LinkCounters
from robotd.board.protocol import encode_move
from sim.observation import gravity_in_torso, tilt_rad
from sim.servo_command import FallRule, holds_frame, limit_targets, max_step_rad, pulses_to_send, up_z_of_quat

#: Duration of the timed move to the safe pose after a fall or at shutdown (ms).
SAFE_POSE_MOVE_MS = 800


class Mode(StrEnum):
    """The safety layer's mode (the module docstring says what each does); the log's ``mode``."""

    STARTUP = "startup"
    RUN = "run"
    HOLD = "hold"
    FALLEN = "fallen"
    SHUTDOWN = "shutdown"
    JOG = "jog"


class TickFlag(StrEnum):
    """What else happened on a tick; the log's ``flags`` (the loop adds ``OVERRUN``)."""

    STALE = "stale"  # the phone data is older than the stale timeout, or absent
    FALL = "fall"  # the fall rule fired on this tick
    RECONNECT = "reconnect"  # the link came back: every channel resent, slowly
    NAN = "nan"  # run tick, targets not finite or misshapen: held instead
    SLEW = "slew"  # a joint was slowed to the slew limit
    CLAMPED = "clamped"  # a joint was held at a calibrated (jog: the operator's) limit
    COALESCED = "coalesced"  # an older frame that had not started was replaced by this one
    DISCONNECTED = "disconnected"  # the link is lost: nothing reached the board
    JOG = "jog"  # an operator's move (robotd calibrate)
    SHUTDOWN = "shutdown"  # the move to the safe pose before the port closes
    OVERRUN = "overrun"  # the tick ran past the next tick's deadline


class Plan(Enum):
    """What :meth:`Safety.send` does on a tick, as :meth:`Safety.decide` settled it."""

    SAFE_POSE = "safe_pose"  # just fell: the timed move to the safe pose
    STARTUP_MOVE = "startup_move"  # start-up or after a reconnect: one timed move of every channel
    NOTHING = "nothing"  # hold, a timed move under way, or fallen
    FOLLOW = "follow"  # run: follow the policy's targets


@dataclass
class CommandResult:
    """What one tick of the safety layer did; goes into the latency log."""

    mode: Mode
    pulses_us: dict[int, int]
    bytes_written: int
    flags: list[TickFlag]
    safety_us: float
    encode_us: float
    write_us: float
    tx_done_s: float  # monotonic time the serial write returned
    connected: bool


@dataclass
class SafetyCounters:
    frames_sent: int = 0
    nan_frames: int = 0
    clamped_ticks: int = 0
    slew_limited_ticks: int = 0
    stale_ticks: int = 0
    falls: int = 0
    rearms: int = 0
    ticks_by_mode: dict[Mode, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`Safety.decide` settled for a tick, handed to :meth:`Safety.send` to carry out."""

    mode: Mode  # only a RUN tick follows the policy
    plan: Plan
    flags: list[TickFlag]
    now_s: float
    decide_s: float  # perf_counter seconds decide took (part of the safety stage)


class Safety:
    """Owns the link to the board; turns targets into safe, clamped, slew-limited pulses.

    ``link`` is not opened yet (:meth:`open` does it) and is written by nobody else.
    """

    def __init__(
        self,
        calibration: Calibration,
        link: BoardIo,
        rate_hz: float,
        *,
        stale_timeout_ms: float | None = None,
        rearm_after_s: float = 0.0,
        on_event: Callable[..., None] = lambda name, **details: None,
    ):
        self.cal = calibration
        self.dt_s = 1.0 / rate_hz
        cfg = calibration.safety
        self.stale_timeout_ms = stale_timeout_ms if stale_timeout_ms is not None else cfg.stale_timeout_ms
        self._fall_rule = FallRule(calibration)  # the simulator's termination uses the same rule
        self.max_step_rad = max_step_rad(calibration, self.dt_s)
        self.rearm_after_s = rearm_after_s
        self.counters = SafetyCounters()
        self._on_event = on_event
        self._channels = calibration.channels
        self._link = link
        self.mode = Mode.STARTUP
        self._commanded_rad = calibration.nominal_rad.copy()
        self._sent_us: np.ndarray | None = None
        self._busy_until_s = 0.0  # a timed move is in progress until then: send nothing
        self._upright_since_s: float | None = None
        self._rearm_requested = False
        self._was_stale = False
        self._pending: Decision | None = None  # decided, not yet sent: one send per decide

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Connect and handshake (the only blocking step, before the loop starts)."""
        self._link.open()

    @property
    def link_counters(self) -> LinkCounters:
        return self._link.counters

    def request_rearm(self) -> None:
        """Leave the fallen state at the next tick (operator action, e.g. SIGUSR1)."""
        self._rearm_requested = True

    def shutdown(self, calibration: Calibration | None = None, *, commanded_only: bool = False) -> CommandResult:
        """Timed move to the safe pose, flushed before closing: the last thing the board hears.

        ``calibration`` converts the safe pose to pulses instead of the one the layer was built
        with: servo trim passes the file as just saved, so the way out uses the operator's new
        centres and directions, not the template's. ``commanded_only`` moves only the channels
        this layer has sent (trim and centring leave a servo nobody moved unpowered).
        """
        self.mode = Mode.SHUTDOWN
        cal = calibration or self.cal
        channels = None
        if commanded_only:
            channels = np.zeros(len(self._channels), dtype=bool) if self._sent_us is None else np.isfinite(self._sent_us)
        result = self._timed_move(cal.safe_rad, SAFE_POSE_MOVE_MS, time.monotonic(), [TickFlag.SHUTDOWN],
                                  cal=cal, channels=channels)
        self.close()
        return result

    def close(self) -> None:
        """Finish writing what is queued (at most 1 s) and close the port, without moving anything."""
        self._link.flush(timeout_s=1.0)
        self._link.close()

    # ------------------------------------------------------------------ the tick

    def command(self, targets_rad: np.ndarray | None, quat_wxyz: np.ndarray | None, age_ms: float | None,
                now_s: float) -> CommandResult:
        """One whole tick for targets known in advance: :meth:`decide`, then :meth:`send`."""
        return self.send(self.decide(quat_wxyz, age_ms, now_s), targets_rad)

    def decide(self, quat_wxyz: np.ndarray | None, age_ms: float | None, now_s: float) -> Decision:
        """First half of a tick: poll the link and settle this tick's mode before any policy runs.

        ``age_ms`` is the phone sample's estimated age now (None before the first packet).
        The decision's mode is ``STARTUP``, ``RUN``, ``HOLD`` or ``FALLEN``; only a ``RUN`` tick
        follows the policy, so the control loop consults the policy on ``RUN`` ticks only.
        Every decision must be handed to one :meth:`send`, which does what was decided.
        """
        t0 = time.perf_counter()
        flags: list[TickFlag] = []
        self._link.poll()
        if self._link.take_reconnected():
            flags.append(TickFlag.RECONNECT)
            # The board may have lost power with the link: re-establish the pose slowly.
            self._sent_us = None
        stale = age_ms is None or quat_wxyz is None or age_ms > self.stale_timeout_ms
        if stale:
            flags.append(TickFlag.STALE)
            self.counters.stale_ticks += 1
        if stale != self._was_stale:
            self._on_event("stale" if stale else "fresh")
            self._was_stale = stale
        self._update_fall(quat_wxyz, stale, now_s, flags)

        if TickFlag.FALL in flags:  # just fell: go to the safe pose, then follow nothing until re-armed
            plan = Plan.SAFE_POSE
        elif self._sent_us is None:  # start-up or after a reconnect: one timed move, then wait for it
            self.mode = Mode.STARTUP if self.mode in (Mode.STARTUP, Mode.RUN, Mode.HOLD) else self.mode
            plan = Plan.STARTUP_MOVE
        elif now_s < self._busy_until_s or self.mode is Mode.FALLEN:
            plan = Plan.NOTHING
        else:
            self.mode = Mode.HOLD if stale else Mode.RUN
            plan = Plan.NOTHING if stale else Plan.FOLLOW
        self._pending = decision = Decision(self.mode, plan, flags, now_s, time.perf_counter() - t0)
        return decision

    @property
    def commanded_rad(self) -> np.ndarray:
        """The pose last commanded to the servos (a copy): the robot's only proprioception."""
        return self._commanded_rad.copy()

    def send(self, decision: Decision, targets_rad: np.ndarray | None) -> CommandResult:
        """Second half of a tick: carry out ``decision`` (this tick's :meth:`decide`) with the
        policy's 17 joint targets.

        The targets are used on a ``RUN`` tick only; ``None`` there (no action this tick)
        keeps the commanded pose and sends nothing. A decision is carried out once, and only
        the latest one: anything else raises ``RuntimeError``.
        """
        if decision is not self._pending:
            raise RuntimeError("Safety.send() without a decide() for this tick")
        self._pending = None
        # The stage timing counts decide's work too, but not whatever ran in between (the policy).
        t0, flags, now_s, plan = time.perf_counter() - decision.decide_s, decision.flags, decision.now_s, decision.plan
        if plan is Plan.SAFE_POSE:
            return self._timed_move(self.cal.safe_rad, SAFE_POSE_MOVE_MS, now_s, flags, t0)
        if plan is Plan.STARTUP_MOVE:
            pose = self.cal.safe_rad if self.mode is Mode.FALLEN else self._commanded_rad
            return self._timed_move(pose, self.cal.startup_move_ms, now_s, flags, t0)
        if plan is Plan.NOTHING or targets_rad is None:
            return self._nothing_sent(flags, t0)

        targets = np.asarray(targets_rad, dtype=np.float64)
        if targets.shape != self._commanded_rad.shape or holds_frame(targets):
            flags.append(TickFlag.NAN)
            self.counters.nan_frames += 1
            return self._nothing_sent(flags, t0)
        limited = limit_targets(self.cal, self._commanded_rad, targets, self.max_step_rad)
        if limited.slewed:
            flags.append(TickFlag.SLEW)
            self.counters.slew_limited_ticks += 1
        if limited.clamped:
            flags.append(TickFlag.CLAMPED)
            self.counters.clamped_ticks += 1
        self._commanded_rad = limited.commanded_rad
        pulses, changed = pulses_to_send(self.cal, limited.commanded_rad, self._sent_us)
        return self._send(pulses, changed, None, flags, t0)

    # ------------------------------------------------------------------ helpers

    def _update_fall(self, quat_wxyz: np.ndarray | None, stale: bool, now_s: float, flags: list[TickFlag]) -> None:
        if quat_wxyz is None or stale:
            return
        up_z = up_z_of_quat(quat_wxyz)
        fell = self._fall_rule.update(up_z)
        tilted = self._fall_rule.tilted(up_z)
        if self.mode is not Mode.FALLEN:
            if fell:
                flags.append(TickFlag.FALL)
                self.counters.falls += 1
                self.mode = Mode.FALLEN
                self._on_event("fall", tilt_deg=float(np.rad2deg(tilt_rad(gravity_in_torso(quat_wxyz)))))
            return
        self._upright_since_s = None if tilted else (self._upright_since_s or now_s)
        auto = self.rearm_after_s > 0 and self._upright_since_s is not None and \
            now_s - self._upright_since_s >= self.rearm_after_s
        if self._rearm_requested or auto:
            self._rearm_requested = False
            self.counters.rearms += 1
            self._on_event("rearmed", auto=auto)
            self.mode = Mode.HOLD
            self._commanded_rad = self.cal.safe_rad.copy()

    def _timed_move(self, pose_rad: np.ndarray, time_ms: int, now_s: float, flags: list[TickFlag],
                    t0: float | None = None, *, cal: Calibration | None = None,
                    channels: np.ndarray | None = None) -> CommandResult:
        """One timed group move to ``pose_rad`` through ``cal`` (default ours), of every channel
        or of the ``channels`` mask."""
        t0 = time.perf_counter() if t0 is None else t0
        cal = cal or self.cal
        self._commanded_rad = cal.clamp_angles(pose_rad)
        pulses = np.rint(cal.angles_to_pulses(self._commanded_rad))
        self._busy_until_s = now_s + time_ms / 1000.0
        return self._send(pulses, np.ones(len(pulses), dtype=bool) if channels is None else channels, time_ms,
                          flags, t0)

    def _send(self, pulses: np.ndarray, changed: np.ndarray, time_ms: int | None, flags: list[TickFlag],
              t0: float) -> CommandResult:
        t1 = time.perf_counter()
        sent = {int(ch): int(p) for ch, p, c in zip(self._channels, pulses, changed) if c}
        frame = encode_move(sent, time_ms) if sent else b""
        t2 = time.perf_counter()
        result = self._link.send(frame) if frame else None
        t3 = time.perf_counter()
        if result is not None and result.connected:
            # Only bytes the OS took count as sent: a frame still queued may be replaced by the
            # next one (coalesced), so its channels stay "unsent" and go out again. Twice is
            # harmless; lost under the deadband is not.
            if result.queued == 0:
                if self._sent_us is None:
                    self._sent_us = np.where(changed, pulses, np.inf)  # a channel never sent stays unknown
                else:
                    self._sent_us[changed] = pulses[changed]
            elif self._sent_us is None:
                self._sent_us = np.full(len(pulses), np.inf)  # nothing confirmed: resend every channel
            self.counters.frames_sent += 1
            if result.coalesced:
                flags.append(TickFlag.COALESCED)
        elif result is not None:
            flags.append(TickFlag.DISCONNECTED)
            sent = {}
        return self._result(sent, result.bytes_written if result else 0, flags, t0, t1, t2, t3)

    def _nothing_sent(self, flags: list[TickFlag], t0: float) -> CommandResult:
        t = time.perf_counter()
        if not self._link.connected:
            flags.append(TickFlag.DISCONNECTED)
        return self._result({}, 0, flags, t0, t, t, t)

    def _result(self, sent: dict[int, int], nbytes: int, flags: list[TickFlag], t0: float, t1: float, t2: float,
                t3: float) -> CommandResult:
        self.counters.ticks_by_mode[self.mode] = self.counters.ticks_by_mode.get(self.mode, 0) + 1
        return CommandResult(
            mode=self.mode,
            pulses_us=sent,
            bytes_written=nbytes,
            flags=flags,
            safety_us=(t1 - t0) * 1e6,
            encode_us=(t2 - t1) * 1e6,
            write_us=(t3 - t2) * 1e6,
            tx_done_s=time.monotonic(),
            connected=self._link.connected,
        )

    # ------------------------------------------------------------------ operator jogging

    def jog(self, pulses_us: dict[int, float], *, limits_us: dict[int, tuple[float, float]] | None = None,
            now_s: float | None = None, alone: bool = False) -> CommandResult:
        """Operator-only manual move for ``robotd calibrate``; never call it from the control loop.

        Bypasses the phone-stale/fall state machine (calibration runs with an operator at the
        robot, often without a phone), but not the limits: ``pulses_us`` maps board channels to
        wanted pulses, each clamped to its joint's calibrated ``min_us..max_us`` (or to the
        operator's ``limits_us[channel]``, itself clamped to 500..2500 us), and the move is sent
        as one timed group move whose ``T`` keeps every joint at or below ``max_slew_rad_s``.
        No deadband: a 1 us trim step is sent. Channels not named hold their last pulse.

        The first call (nothing sent yet, or after a reconnect) moves every channel, over at
        least ``startup_move_ms``, from an unknown pose to the last commanded pose (nominal at
        start) with the given channels replaced: wait that long before measuring anything.
        With ``alone`` only the named channels are ever sent, so an untrimmed robot never has
        all 17 servos driven through a template calibration at once (``calibrate center`` and
        trim); a channel's first move is then the slow one. Raises ``ValueError`` for an
        unknown channel or a non-finite pulse.
        """
        from calibration.description import PULSE_MAX_US, PULSE_MIN_US

        t0 = time.perf_counter()
        now_s = time.monotonic() if now_s is None else now_s
        flags: list[TickFlag] = [TickFlag.JOG]
        self._link.poll()
        if self._link.take_reconnected():
            flags.append(TickFlag.RECONNECT)
            self._sent_us = None
        self.mode = Mode.JOG
        index = {int(ch): i for i, ch in enumerate(self._channels)}
        never_sent = np.ones(len(self._channels), dtype=bool) if self._sent_us is None else ~np.isfinite(self._sent_us)
        base = np.rint(self.cal.unlimited_pulses(self._commanded_rad))
        pulses = base.copy()
        changed = never_sent.copy() if self._sent_us is None and not alone else np.zeros(len(pulses), dtype=bool)
        for channel, wanted in pulses_us.items():
            i = index.get(int(channel))
            if i is None:
                raise ValueError(f"channel {channel} is not a calibrated joint")
            if not np.isfinite(wanted):
                raise ValueError(f"channel {channel}: pulse {wanted!r} is not finite")
            lo, hi = (limits_us or {}).get(int(channel), (self.cal.min_us[i], self.cal.max_us[i]))
            lo, hi = max(float(lo), PULSE_MIN_US), min(float(hi), PULSE_MAX_US)
            limited = min(max(float(wanted), lo), hi)
            if limited != float(wanted) and TickFlag.CLAMPED not in flags:
                flags.append(TickFlag.CLAMPED)
            pulses[i] = float(np.rint(limited))
            changed[i] = True
        # The slowest joint sets T: no joint turns faster than the configured slew rate.
        pulses_rad = self.cal.pulses_to_angles(pulses)
        step_rad = np.abs(pulses_rad - self.cal.pulses_to_angles(base))
        time_ms = int(np.ceil(float(np.max(step_rad[changed], initial=0.0)) / self.cal.safety.max_slew_rad_s * 1e3))
        if np.any(changed & never_sent):  # from an unknown pose: slowly
            time_ms = max(time_ms, int(self.cal.startup_move_ms))
        self._commanded_rad = pulses_rad
        self._busy_until_s = now_s + time_ms / 1000.0
        if not np.any(changed):
            return self._nothing_sent(flags, t0)
        return self._send(pulses, changed, time_ms if time_ms > 0 else None, flags, t0)
