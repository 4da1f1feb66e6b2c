"""The phone stops, comes back, or says the robot fell: hold, smooth resume, safe pose, re-arm.

Times are taken from the three clocks that matter: the test's send times, the daemon's log
(tick time, mode, flags, logged packet arrivals) and the emulator's receive time of each
move. All are CLOCK_MONOTONIC.
"""

from __future__ import annotations

import math
import signal
import time

import numpy as np
from conftest import RATE_HZ, Rig, figure, is_timed, max_slew_step_us, pulses_of, streamer

from robotd.daemon.safety import SAFE_POSE_MOVE_MS
from sim.phone_stream import phone_sample, swaying_torso

TICK_MS = 1000.0 / RATE_HZ


def _step_bound_us(rig: Rig) -> dict[int, float]:
    """Largest pulse change between consecutive sends of a channel that the slew limit allows:
    one tick's slew, plus the deadband a channel may have been held back by, plus rounding."""
    step = max_slew_step_us(rig.cal)
    return {int(ch): float(s) + rig.cal.safety.deadband_us + 1.0 for ch, s in zip(rig.cal.channels, step)}


def _max_steps(moves, start_pulses: dict[int, int]) -> dict[int, float]:
    """Per channel, the largest change between consecutive commanded pulses over ``moves``."""
    last = dict(start_pulses)
    worst: dict[int, float] = {}
    for m in moves:
        for ch, p in m.pulses_us.items():
            if ch in last:
                worst[ch] = max(worst.get(ch, 0.0), abs(p - last[ch]))
            last[ch] = p
    return worst


def _arrivals(log, t_from: float, t_to: float) -> list[float]:
    """Arrival times of the phone readings the daemon logged, within [t_from, t_to]."""
    rows = np.flatnonzero((log.t_s >= t_from - 0.05) & (log.t_s <= t_to + 0.5))
    out = []
    for tick in log.raw_ticks(rows.tolist()):
        out.extend(r[0] for r in tick.rx if t_from <= r[0] <= t_to)
    return sorted(out)


def test_stale_phone_holds_then_resumes_smoothly(rig: Rig, emulator) -> None:
    case = "stale"
    d = rig.start(emulator.path)
    d.wait_listening()
    stale_ms = rig.cal.safety.stale_timeout_ms
    with streamer(d.udp_port) as phone:
        t_start = time.monotonic()
        phone.start(swaying_torso(rig.cal.phone_to_torso, amplitude_rad=0.3))
        time.sleep(1.2)
        phone.stop()
        t_stopped = time.monotonic()
        time.sleep(0.7)
        n_before_resume = emulator.moves_received
        t_resume = time.monotonic()
        # The phone's clock runs on through the gap (Android stamps time since boot); the
        # streamer restarts its clock at 0, so shift it by the time elapsed.
        resumed = swaying_torso(rig.cal.phone_to_torso, pitch0_rad=0.25, amplitude_rad=0.3)
        offset = t_resume - t_start
        phone.start(lambda t: resumed(t + offset))
        time.sleep(1.0)
        phone.stop()
    assert d.stop(signal.SIGTERM) == 0, d.stderr()
    log = d.log()
    moves = list(emulator.moves)

    # The last datagrams may be taken off the socket after phone.stop() returned (the daemon's
    # loop was busy): count every arrival before the resume, which is 0.7 s later.
    last_arrival = _arrivals(log, t_stopped - 0.5, t_resume)[-1]
    hold = np.flatnonzero(log.mode_is("hold") & (log.t_s > last_arrival))
    t_hold = float(log.t_s[hold[0]])
    assert log.has_flag("stale")[hold[0]]
    hold_delay_ms = (t_hold - last_arrival) * 1e3
    first_arrival = _arrivals(log, t_resume, t_resume + 0.5)[0]
    run_again = np.flatnonzero(log.mode_is("run") & (log.t_s > first_arrival))
    t_run = float(log.t_s[run_again[0]])
    resume_delay_ms = (t_run - first_arrival) * 1e3
    policy_moves_in_hold = [m for m in moves if t_hold < m.received_s < first_arrival]
    after = [m for m in moves if m.received_s > t_run]
    first_move_ms = (after[0].received_s - first_arrival) * 1e3
    # Slew: from the last pulses before the hold through every move after the resume.
    held = {}
    for m in moves:
        if m.received_s < t_hold:
            held.update(m.pulses_us)
    running_after = [m for m in after if not is_timed(m)]
    worst = _max_steps(running_after, held)
    bound = _step_bound_us(rig)
    first_step = max(abs(p - held[ch]) for ch, p in running_after[0].pulses_us.items())

    figure(case, "stale_timeout_ms", stale_ms)
    figure(case, "last_packet_to_hold_ms", round(hold_delay_ms, 1))
    figure(case, "hold_tick_lateness_ms", round(float(log.t_s[hold[0]] - log.deadline_s[hold[0]]) * 1e3, 2))
    figure(case, "moves_during_hold", len(policy_moves_in_hold))
    figure(case, "first_packet_to_run_ms", round(resume_delay_ms, 1))
    figure(case, "first_packet_to_first_move_ms", round(first_move_ms, 1))
    figure(case, "first_resume_step_us", first_step)
    figure(case, "max_step_us_after_resume", max(worst.values()))
    figure(case, "slew_bound_us", round(min(bound.values()), 1))

    # Stale once the sample is older than the timeout, seen at the next tick: at most one tick
    # period after the timeout, plus however late that tick itself started (measured).
    hold_late_ms = max(0.0, float(log.t_s[hold[0]] - log.deadline_s[hold[0]]) * 1e3)
    assert hold_delay_ms <= stale_ms + TICK_MS + hold_late_ms + 1.0
    assert not policy_moves_in_hold
    assert n_before_resume == len([m for m in moves if m.received_s < t_resume])
    assert resume_delay_ms <= TICK_MS + 5.0
    assert all(worst[ch] <= bound[ch] for ch in worst), (worst, bound)
    assert log.has_flag("slew")[run_again].any()  # the pitch offset made the resume slew-limited
    assert emulator.framing_errors == 0


class Tilt:
    """A phone whose torso orientation the test sets while it streams."""

    def __init__(self, mount: np.ndarray):
        self.mount = mount
        self.pitch_rad = 0.0

    def __call__(self, t: float):
        p = self.pitch_rad + 0.03 * math.sin(math.pi * t)
        return phone_sample(t, (math.cos(p / 2), 0.0, math.sin(p / 2), 0.0), (0.0, 0.0, 0.0), self.mount)


def _fall(rig: Rig, emulator, *extra: str):
    d = rig.start(emulator.path, *extra)
    d.wait_listening()
    tilt = Tilt(rig.cal.phone_to_torso)
    phone = streamer(d.udp_port)
    phone.start(tilt)
    time.sleep(0.8)
    tilt.pitch_rad = math.radians(rig.cal.safety.fall_tilt_deg + 15)
    t_tilt = time.monotonic()
    return d, tilt, phone, t_tilt


def _fall_move(rig: Rig, emulator, t_tilt: float):
    safe = pulses_of(rig.cal, rig.cal.safe_rad)
    fall_moves = [m for m in emulator.moves if m.received_s > t_tilt and m.time_ms == SAFE_POSE_MOVE_MS]
    assert fall_moves and fall_moves[0].pulses_us == safe
    return fall_moves[0]


def test_fall_safe_pose_then_nothing_until_sigusr1(rig: Rig, emulator) -> None:
    case = "fall_sigusr1"
    d, tilt, phone, t_tilt = _fall(rig, emulator)
    try:
        time.sleep(0.5)
        tilt.pitch_rad = 0.0  # upright again, but not re-armed
        time.sleep(1.0)
        t_rearm = d.send(signal.SIGUSR1)
        time.sleep(0.8)
    finally:
        phone.close()
    assert d.stop(signal.SIGTERM) == 0, d.stderr()
    assert f"re-arm with `kill -USR1 {d.pid}`" in d.stderr()  # the start-up line names the command
    fall = _fall_move(rig, emulator, t_tilt)
    moves = list(emulator.moves)
    between = [m for m in moves if fall.received_s < m.received_s < t_rearm]
    after = [m for m in moves if m.received_s > t_rearm and not is_timed(m)]
    rearmed = d.events("rearmed")
    worst = _max_steps(after, fall.pulses_us)
    bound = _step_bound_us(rig)
    figure(case, "tilt_to_safe_pose_move_ms", round((fall.received_s - t_tilt) * 1e3, 1))
    figure(case, "moves_between_fall_and_rearm", len(between))
    figure(case, "sigusr1_to_first_policy_move_ms", round((after[0].received_s - t_rearm) * 1e3, 1))
    figure(case, "max_step_us_after_rearm", max(worst.values()))
    fall_budget_ms = (rig.cal.safety.fall_ticks + 1) * TICK_MS + 20.0
    assert (fall.received_s - t_tilt) * 1e3 <= fall_budget_ms
    assert not between, between  # no policy command until re-armed, although upright for 1 s
    assert len(rearmed) == 1 and rearmed[0]["auto"] is False
    assert (after[0].received_s - t_rearm) * 1e3 <= 3 * TICK_MS + 20.0
    assert all(worst[ch] <= bound[ch] for ch in worst), (worst, bound)
    assert d.summary()["falls"] == 1 and emulator.framing_errors == 0


def test_fall_rearm_after(rig: Rig, emulator) -> None:
    case = "fall_rearm_after"
    rearm_s = 0.5
    d, tilt, phone, t_tilt = _fall(rig, emulator, "--rearm-after", str(rearm_s))
    try:
        time.sleep(0.6)  # still tilted: must stay fallen however long
        tilt.pitch_rad = 0.0
        t_upright = time.monotonic()
        time.sleep(rearm_s + 0.7)
    finally:
        phone.close()
    assert d.stop(signal.SIGTERM) == 0, d.stderr()
    assert f"re-arm with `kill -USR1 {d.pid}`" in d.stderr()  # the start-up line names the command
    fall = _fall_move(rig, emulator, t_tilt)
    moves = list(emulator.moves)
    between = [m for m in moves if fall.received_s < m.received_s < t_upright + rearm_s]
    after = [m for m in moves if m.received_s > t_upright and not is_timed(m)]
    rearmed = d.events("rearmed")
    figure(case, "tilt_to_safe_pose_move_ms", round((fall.received_s - t_tilt) * 1e3, 1))
    figure(case, "upright_to_rearm_event_ms", round((rearmed[0]["t"] - t_upright) * 1e3, 1))
    figure(case, "upright_to_first_policy_move_ms", round((after[0].received_s - t_upright) * 1e3, 1))
    assert not between
    assert len(rearmed) == 1 and rearmed[0]["auto"] is True
    assert rearm_s * 1e3 <= (rearmed[0]["t"] - t_upright) * 1e3 <= rearm_s * 1e3 + 2 * TICK_MS + 30.0
    assert after[0].received_s > rearmed[0]["t"]
