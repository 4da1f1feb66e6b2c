"""Limits under arbitrary policy output, through every safety state, checked at the board.

Property-based (hypothesis): sequences of ticks whose targets are anything a broken policy
might produce (NaN, +-inf, 1e300, subnormals, plausible angles, sudden jumps), while the
phone goes stale and fresh, the torso tilts past the fall threshold and back, and the
operator re-arms. ``robotd.daemon.safety.Safety`` is driven in-process (the simulated clock makes
each example instant) against the emulator's pty; the emulator's record of what actually
arrived is checked: every pulse inside the calibrated limits, every untimed step within one
tick's slew (plus the deadband a channel may lag by, plus rounding), every timed move exactly
the start-up or safe pose, no framing error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import figure, pulses_of
from hypothesis import HealthCheck, given, settings, strategies as st

from calibration import load_calibration
from robotd.board.link import SerialLink
from robotd.daemon.safety import SAFE_POSE_MOVE_MS, Safety
from sim.board_emulator import BoardEmulator

CAL = load_calibration()
RATE_HZ = 50.0
DT_S = 1.0 / RATE_HZ
LIMITS = {j.channel: (j.min_us, j.max_us) for j in CAL.joints}
STEP_US = {j.channel: CAL.safety.max_slew_rad_s * DT_S * j.us_per_rad + CAL.safety.deadband_us + 1 for j in CAL.joints}
SAFE = pulses_of(CAL, CAL.safe_rad)
UPRIGHT = np.array([1.0, 0.0, 0.0, 0.0])
FALLEN = np.array([math.cos(0.6), 0.0, math.sin(0.6), 0.0])  # 69 degrees

angle = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-4.0, 4.0),
    st.sampled_from([0.0, -0.0, 1e300, -1e300, 5e-324, math.pi, -math.pi, 1e6]),
)
frame = st.one_of(
    st.lists(angle, min_size=17, max_size=17).map(np.array),
    st.floats(-3.0, 3.0).map(lambda a: np.full(17, a)),  # the whole body jumps at once
    st.just(np.full(17, np.nan)),
)
class Rig:
    def __init__(self, emulator: BoardEmulator):
        self.emulator = emulator
        self.safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ)
        self.safety.open()
        self.now_s = 1000.0
        self.checked = 0
        self.state: dict[int, int] | None = None
        self.ticks = 0
        self.worst_step = 0.0

    def check(self) -> None:
        em = self.emulator
        assert em.wait_for(lambda e: e.moves_received >= self.safety.counters.frames_sent, 2.0), em.summary()
        assert em.framing_errors == 0, list(em.bad_frames)
        moves = list(em.moves)[self.checked:]
        self.checked += len(moves)
        for move in moves:
            for ch, pulse in move.pulses_us.items():
                lo, hi = LIMITS[ch]
                assert lo <= pulse <= hi, (ch, pulse)
            if move.time_ms is not None:  # timed: start-up/reconnect pose or the safe pose, all 17 channels
                assert len(move.pulses_us) == 17
                assert move.time_ms == CAL.startup_move_ms or (move.time_ms == SAFE_POSE_MOVE_MS
                                                               and move.pulses_us == SAFE)
                self.state = dict(move.pulses_us)
                continue
            assert self.state is not None, "an untimed move before the first timed move"
            for ch, pulse in move.pulses_us.items():
                step = abs(pulse - self.state[ch])
                self.worst_step = max(self.worst_step, step)
                assert step <= STEP_US[ch], (ch, pulse, self.state[ch])
                self.state[ch] = pulse


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with BoardEmulator() as emulator:
        r = Rig(emulator)
        yield r
        r.safety.shutdown()
        r.check()
        figure("limits", "ticks_driven", r.ticks)
        figure("limits", "moves_checked", r.checked)
        figure("limits", "worst_untimed_step_us", r.worst_step)
        figure("limits", "step_bound_us", round(min(STEP_US.values()), 2))
        c = r.safety.counters
        figure("limits", "nan_clamped_slew_falls_rearms", (c.nan_frames, c.clamped_ticks, c.slew_limited_ticks,
                                                           c.falls, c.rearms))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ticks=st.lists(st.tuples(frame, st.sampled_from(["fresh"] * 6 + ["stale", "none"]),
                                st.sampled_from(["upright"] * 4 + ["fallen"]), st.integers(0, 9),
                                st.integers(1, 6)),
                      min_size=1, max_size=30))
def test_property_board_only_sees_limited_pulses(rig: Rig, ticks) -> None:
    """The rig persists across examples, so states carry over (fallen, hold, busy timed moves)."""
    for targets, phone, torso, rearm, repeat in ticks:
        quat = None if phone == "none" else (UPRIGHT if torso == "upright" else FALLEN)
        age_ms = None if phone == "none" else (5.0 if phone == "fresh" else 10 * CAL.safety.stale_timeout_ms)
        if rearm == 0:
            rig.safety.request_rearm()
        for _ in range(repeat):  # held for a few ticks, so falls (3 tilted ticks) happen
            rig.now_s += DT_S
            rig.safety.command(targets, quat, age_ms, rig.now_s)
            rig.ticks += 1
    rig.check()
