"""The safety layer's state machine, driven tick by tick against the board emulator's pty, and its
rules under board faults at one chosen tick against the in-memory FakeBoard."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from calibration import load_calibration
from robotd.board.io import BoardFault, FakeBoard
from robotd.board.link import SerialLink
from robotd.board.protocol import encode_move
from robotd.daemon.safety import SAFE_POSE_MOVE_MS, Safety
from sim.board_emulator import BoardEmulator

CAL = load_calibration()
RATE_HZ = 50.0
DT_S = 1.0 / RATE_HZ
UPRIGHT = np.array([1.0, 0.0, 0.0, 0.0])
FRESH_MS = 5.0


def tilted(angle_rad: float) -> np.ndarray:
    return np.array([math.cos(angle_rad / 2), 0.0, math.sin(angle_rad / 2), 0.0])


def pulses_of(angles_rad: np.ndarray) -> dict[int, int]:
    return dict(zip(CAL.channels.tolist(), np.rint(CAL.angles_to_pulses(angles_rad)).astype(int).tolist()))


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def tick(self, n: int = 1) -> float:
        self.now_s += n * DT_S
        return self.now_s


@pytest.fixture
def rig() -> Iterator[tuple[Safety, BoardEmulator, Clock]]:
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ)
        safety.open()
        clock = Clock()
        # Start-up: the timed move, then wait it out.
        result = safety.command(CAL.nominal_rad, UPRIGHT, FRESH_MS, clock.now_s)
        assert result.mode == "startup" and len(result.pulses_us) == 17
        clock.tick(int(CAL.startup_move_ms / 1000 / DT_S) + 1)
        yield safety, emulator, clock
        safety.shutdown()


def received(emulator: BoardEmulator, n: int) -> list:
    assert emulator.wait_for(lambda em: emulator.moves_received >= n, 2.0), emulator.summary()
    return list(emulator.moves)


def test_startup_is_one_timed_move_to_nominal(rig) -> None:
    safety, emulator, clock = rig
    first = received(emulator, 1)[0]
    assert first.time_ms == CAL.startup_move_ms and first.pulses_us == pulses_of(CAL.nominal_rad)


def test_nothing_is_sent_during_the_startup_move() -> None:
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ)
        safety.open()
        now = 0.0
        safety.command(CAL.nominal_rad, UPRIGHT, FRESH_MS, now)
        target = CAL.nominal_rad + 0.2
        for _ in range(int(CAL.startup_move_ms / 1000 / DT_S) - 1):
            now += DT_S
            assert safety.command(target, UPRIGHT, FRESH_MS, now).pulses_us == {}
        safety.shutdown()


def test_mode_is_decided_before_the_targets_are_given() -> None:
    """decide() settles the mode and sends nothing; send() then does what it settled."""
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ)
        safety.open()
        now = 0.0
        decision = safety.decide(UPRIGHT, FRESH_MS, now)
        assert decision.mode == "startup"
        assert emulator.moves_received == 0 and safety.counters.frames_sent == 0
        assert safety.send(decision, None).pulses_us == pulses_of(CAL.nominal_rad)  # the start-up move needs no targets
        with pytest.raises(RuntimeError, match="decide"):
            safety.send(decision, CAL.nominal_rad)  # one send per decide
        now += CAL.startup_move_ms / 1000 + DT_S
        decision = safety.decide(UPRIGHT, FRESH_MS, now)
        assert decision.mode == "run"
        np.testing.assert_array_equal(safety.commanded_rad, CAL.nominal_rad)
        assert safety.send(decision, None).pulses_us == {}  # a run tick without an action holds still
        now += DT_S
        stale = safety.decide(None, None, now)
        assert stale.mode == "hold"
        with pytest.raises(RuntimeError):
            safety.send(decision, CAL.nominal_rad)  # only this tick's decision is carried out
        assert safety.send(stale, CAL.nominal_rad + 0.3).pulses_us == {}  # targets on a hold tick are ignored
        safety.shutdown()


def test_follows_targets_slew_limited_and_clamped(rig) -> None:
    safety, emulator, clock = rig
    target = CAL.nominal_rad.copy()
    knee = CAL.index("r_knee")
    target[knee] = 10.0  # far beyond the joint's limit
    max_step_rad = CAL.safety.max_slew_rad_s * DT_S
    previous = CAL.nominal_rad[knee]
    for _ in range(40):
        result = safety.command(target, UPRIGHT, FRESH_MS, clock.tick())
        assert result.mode == "run"
        commanded = safety._commanded_rad[knee]
        assert commanded - previous <= max_step_rad + 1e-12
        previous = commanded
    assert "clamped" in result.flags
    assert math.isclose(previous, CAL.joint("r_knee").max_rad)
    moves = received(emulator, safety.counters.frames_sent)  # every frame sent so far has arrived
    assert max(m.pulses_us.get(CAL.joint("r_knee").channel, 0) for m in moves) == CAL.joint("r_knee").max_us


def test_deadband_sends_only_changed_channels(rig) -> None:
    safety, emulator, clock = rig
    target = CAL.nominal_rad.copy()
    hip = CAL.joint("r_hip_pitch")
    target[CAL.index("r_hip_pitch")] += 3.0 / hip.us_per_rad  # 3 us: inside the 5 us deadband
    assert safety.command(target, UPRIGHT, FRESH_MS, clock.tick()).pulses_us == {}
    target[CAL.index("r_hip_pitch")] += 5.0 / hip.us_per_rad  # now 8 us away
    result = safety.command(target, UPRIGHT, FRESH_MS, clock.tick())
    assert list(result.pulses_us) == [hip.channel]
    assert result.bytes_written == len(f"#{hip.channel}P{result.pulses_us[hip.channel]}\r\n")


def test_stale_phone_holds_still_then_resumes_smoothly(rig) -> None:
    safety, emulator, clock = rig
    target = CAL.nominal_rad + 0.3 * (CAL.max_rad - CAL.nominal_rad)
    stale_ms = CAL.safety.stale_timeout_ms + 1
    for _ in range(10):
        result = safety.command(target, UPRIGHT, stale_ms, clock.tick())
        assert result.mode == "hold" and "stale" in result.flags and result.pulses_us == {}
    assert safety.command(target, None, None, clock.tick()).mode == "hold"  # no phone at all
    result = safety.command(target, UPRIGHT, FRESH_MS, clock.tick())
    assert result.mode == "run" and "slew" in result.flags  # resumes, one slew-limited step at a time


def test_nan_and_wrong_shape_never_reach_the_board(rig) -> None:
    safety, emulator, clock = rig
    for bad in (np.full(17, np.nan), np.r_[CAL.nominal_rad[:-1], np.inf], np.zeros(3)):
        result = safety.command(bad, UPRIGHT, FRESH_MS, clock.tick())
        assert "nan" in result.flags and result.pulses_us == {}
    assert safety.counters.nan_frames == 3


def test_fall_goes_to_safe_pose_and_ignores_policy_until_rearmed(rig) -> None:
    safety, emulator, clock = rig
    too_far = math.radians(CAL.safety.fall_tilt_deg + 5)
    target = CAL.nominal_rad + 0.1
    for i in range(CAL.safety.fall_ticks - 1):
        assert safety.command(target, tilted(too_far), FRESH_MS, clock.tick()).mode == "run"
    result = safety.command(target, tilted(too_far), FRESH_MS, clock.tick())
    assert result.mode == "fallen" and "fall" in result.flags
    safe_move = received(emulator, safety.counters.frames_sent)[-1]
    assert safe_move.time_ms == SAFE_POSE_MOVE_MS and safe_move.pulses_us == pulses_of(CAL.safe_rad)
    count = emulator.moves_received
    for _ in range(50):  # upright again, fresh data, policy asking to move: nothing until re-armed
        assert safety.command(target, UPRIGHT, FRESH_MS, clock.tick()).pulses_us == {}
    assert emulator.moves_received == count
    safety.request_rearm()
    result = safety.command(target, UPRIGHT, FRESH_MS, clock.tick())
    # Re-armed: follows again, starting from the safe pose one slew-limited step at a time.
    assert result.mode == "run" and result.pulses_us and "slew" in result.flags
    step_rad = CAL.pulses_to_angles(np.array([result.pulses_us.get(int(c), p) for c, p in
                                              zip(CAL.channels, CAL.angles_to_pulses(CAL.safe_rad))])) - CAL.safe_rad
    assert np.max(np.abs(step_rad)) <= CAL.safety.max_slew_rad_s * DT_S + 1.0 / 600


def test_auto_rearm_after_upright_time() -> None:
    with BoardEmulator() as emulator:
        safety = Safety(CAL, SerialLink(emulator.path), RATE_HZ, rearm_after_s=0.5)
        safety.open()
        now = 0.0
        safety.command(CAL.nominal_rad, UPRIGHT, FRESH_MS, now)
        now += CAL.startup_move_ms / 1000 + DT_S
        for _ in range(CAL.safety.fall_ticks):
            now += DT_S
            result = safety.command(CAL.nominal_rad, tilted(1.2), FRESH_MS, now)
        assert result.mode == "fallen"
        modes = []
        for _ in range(40):
            now += DT_S
            modes.append(safety.command(CAL.nominal_rad, UPRIGHT, FRESH_MS, now).mode)
        assert modes[:20].count("fallen") == 20 and modes[-1] == "run"
        safety.shutdown()


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.lists(finite_or_not, min_size=17, max_size=17), min_size=1, max_size=15))
def test_property_no_pulse_outside_limits_no_step_beyond_slew(rig, frames: list[list[float]]) -> None:
    """Whatever the policy says (NaN, inf, 1e300), the board only sees safe, slew-limited pulses.

    The rig persists across examples, so the moves checked are the whole sequence so far.
    """
    safety, emulator, clock = rig
    frames_before = safety.counters.frames_sent
    sent = 0
    for frame in frames:
        sent += bool(safety.command(np.array(frame), UPRIGHT, FRESH_MS, clock.tick()).pulses_us)
    # Each command that returned pulses wrote exactly one frame, and a frame with any NaN or inf
    # never sends anything (the NaN guard holds instead).
    assert safety.counters.frames_sent - frames_before == sent
    assert sent <= sum(bool(np.isfinite(frame).all()) for frame in frames)
    assert emulator.wait_for(lambda em: safety.counters.frames_sent == emulator.moves_received, 2.0)
    limits = {j.channel: (j.min_us, j.max_us, j.us_per_rad) for j in CAL.joints}
    moves = list(emulator.moves)[1:]  # after the start-up move
    state = pulses_of(CAL.nominal_rad)
    for move in moves:
        for ch, pulse in move.pulses_us.items():
            lo, hi, us_per_rad = limits[ch]
            assert lo <= pulse <= hi
            # Deadband means a channel may lag by < 5 us, then catch up: allow that plus rounding.
            max_step_us = CAL.safety.max_slew_rad_s * DT_S * us_per_rad
            assert abs(pulse - state[ch]) <= max_step_us + CAL.safety.deadband_us + 1, (ch, pulse, state[ch])
            state[ch] = pulse


# ----------------------------------------------------------------------------- faults at one tick (no pty)


def _fake_rig(faults: dict[int, BoardFault]) -> tuple[Safety, FakeBoard, Clock]:
    """Safety over a FakeBoard, past its start-up move (tick 0) and following from tick START_TICKS on."""
    board = FakeBoard(faults)
    safety = Safety(CAL, board, RATE_HZ)
    safety.open()
    clock = Clock()
    ticks = [safety.command(CAL.nominal_rad, UPRIGHT, FRESH_MS, clock.tick()) for _ in range(START_TICKS)]
    assert ticks[0].mode == "startup" and ticks[0].pulses_us == pulses_of(CAL.nominal_rad)
    assert [t.mode for t in ticks[1:]] == ["startup"] * (START_TICKS - 1) and board.tick == START_TICKS - 1
    return safety, board, clock


#: Ticks the start-up move takes (tick 0 sends it; nothing is followed until it is done).
START_TICKS = math.ceil(CAL.startup_move_ms / 1000 / DT_S) + 1
KNEE = CAL.index("r_knee")


def _bent(rad: float) -> np.ndarray:
    target = CAL.nominal_rad.copy()
    target[KNEE] += rad
    return target


@pytest.mark.parametrize("short", [False, True])
def test_a_short_write_resends_its_channels_next_tick(short: bool) -> None:
    """A frame the OS took only part of is not counted as received: its channels go out again
    on the next tick even though they moved less than the deadband since."""
    k = START_TICKS
    safety, board, clock = _fake_rig({k: BoardFault.SHORT_WRITE} if short else {})
    first = safety.command(_bent(0.05), UPRIGHT, FRESH_MS, clock.tick())
    assert first.mode == "run" and list(first.pulses_us) == [int(CAL.channels[KNEE])]
    again = safety.command(_bent(0.05), UPRIGHT, FRESH_MS, clock.tick())
    assert again.pulses_us == (first.pulses_us if short else {})
    assert bytes(board.received).endswith(b"".join(board.frames[-2:] if short else board.frames[-1:]))


def test_a_silent_board_drops_frames_without_leaving_run_then_a_reset_moves_slowly() -> None:
    """Lost at one tick: nothing reaches the board, the tick says "disconnected" and the
    commanded pose still follows the policy; the board back (re-powered) at a later tick: one
    timed move of every channel to the pose commanded now, over startup_move_ms."""
    lost, back = START_TICKS + 2, START_TICKS + 6
    safety, board, clock = _fake_rig({lost: BoardFault.SILENT, back: BoardFault.RESET})
    for tick in range(START_TICKS, back):
        result = safety.command(_bent(0.02 * (tick - START_TICKS + 1)), UPRIGHT, FRESH_MS, clock.tick())
        assert result.mode == "run"
        assert ("disconnected" in result.flags) == (tick >= lost) and (result.pulses_us == {}) == (tick >= lost)
    received = bytes(board.received)
    result = safety.command(_bent(0.3), UPRIGHT, FRESH_MS, clock.tick())
    assert "reconnect" in result.flags and result.mode == "startup"
    assert result.pulses_us == pulses_of(_bent(0.02 * (back - START_TICKS)))
    assert bytes(board.received) == received + encode_move(result.pulses_us, CAL.startup_move_ms)


def test_a_board_reset_mid_way_through_the_safe_pose_move_sends_the_safe_pose_again() -> None:
    """Fallen, the safe-pose move under way, the board resets: the safe pose again (not the pose
    before the fall), timed, and the layer stays fallen."""
    tilt = tilted(math.radians(CAL.safety.fall_tilt_deg + 5))
    fell = START_TICKS + CAL.safety.fall_ticks - 1
    safety, board, clock = _fake_rig({fell + 3: BoardFault.RESET})
    for _ in range(CAL.safety.fall_ticks):
        result = safety.command(_bent(0.05), tilt, FRESH_MS, clock.tick())
    assert "fall" in result.flags and result.pulses_us == pulses_of(CAL.safe_rad) and board.tick == fell
    for _ in range(2):  # mid-move: nothing
        assert safety.command(_bent(0.05), tilt, FRESH_MS, clock.tick()).pulses_us == {}
    result = safety.command(_bent(0.05), tilt, FRESH_MS, clock.tick())
    assert "reconnect" in result.flags and result.mode == "fallen"
    assert board.frames[-1] == encode_move(pulses_of(CAL.safe_rad), CAL.startup_move_ms)
