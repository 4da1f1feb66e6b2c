"""The simulated robot's board: timed moves ramp from the pulse it last sent, never from the true angle.

A board without position feedback cannot know where a servo is, so the simulated one must
not know either: the daemon's real Safety talks to the simulated robot's board emulator over
its pty, with the joints hanging away from every pose the board was ever told.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from robotd.board.link import SerialLink
from robotd.daemon.safety import SAFE_POSE_MOVE_MS, Safety
from sim.robot_process import SimRobotConfig, SimulatedRobotRunner

UPRIGHT = np.array([1.0, 0.0, 0.0, 0.0])


class Board:
    """The runner's board state driven by a real Safety; the physics is not stepped."""

    def __init__(self, cfg: SimRobotConfig):
        self.runner = SimulatedRobotRunner(cfg)
        self.cal = self.runner.cal
        adr = self.runner.robot.biped.qpos_adr
        qpos = self.runner.robot.data.qpos
        # The robot hangs limp on its string: joints somewhere neither nominal nor 1500 us.
        qpos[adr] = self.cal.clamp_angles(self.cal.nominal_rad + 0.3)
        self.true_rad = qpos[adr].copy()
        self.runner.board.start()
        self.safety = Safety(self.cal, SerialLink(self.runner.board.path), 50.0)
        self.safety.open()

    def next_move(self, n: int):
        board = self.runner.board
        assert board.wait_for(lambda em: em.moves_received >= n, 2.0), board.summary()
        move = board.moves[-1]
        self.runner._apply_moves(move.received_s)
        return move

    def target(self, t_s: float) -> np.ndarray:
        return self.runner._current_target(t_s).copy()

    def close(self) -> None:
        self.runner.board.stop()
        self.runner.phone.close()


@pytest.fixture
def board(request: pytest.FixtureRequest) -> Iterator[Board]:
    b = Board(SimRobotConfig(pushes=None, **getattr(request, "param", {})))
    yield b
    b.close()


def test_first_timed_move_jumps_then_later_moves_ramp_from_the_last_pulse(board: Board) -> None:
    cal = board.cal
    board.safety.command(cal.nominal_rad, UPRIGHT, 5.0, time.monotonic())  # the slow start-up move
    move = board.next_move(1)
    assert move.time_ms == cal.startup_move_ms
    nominal = cal.pulses_to_angles(np.rint(cal.angles_to_pulses(cal.nominal_rad)))
    # Nothing to interpolate from (the board never sent a pulse): the servos jump to the target,
    # whatever T says. The true joint angle is not where the ramp starts.
    start = board.target(move.received_s)
    assert np.all(np.abs(start - board.true_rad) > 0.1)
    np.testing.assert_allclose(start, nominal, rtol=0, atol=1e-12)
    np.testing.assert_allclose(board.target(move.received_s + cal.startup_move_ms / 2000), nominal, rtol=0, atol=1e-12)

    # The next timed move (shutdown, to the safe pose) ramps from the last commanded pulse.
    board.safety.shutdown()
    move = board.next_move(2)
    assert move.time_ms == SAFE_POSE_MOVE_MS
    safe = cal.pulses_to_angles(np.rint(cal.angles_to_pulses(cal.safe_rad)))
    np.testing.assert_allclose(board.target(move.received_s), nominal, rtol=0, atol=1e-12)
    np.testing.assert_allclose(board.target(move.received_s + SAFE_POSE_MOVE_MS / 2000), (nominal + safe) / 2,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(board.target(move.received_s + SAFE_POSE_MOVE_MS / 1000), safe, rtol=0, atol=1e-12)


@pytest.mark.parametrize("board", [{"first_move_from_us": 1500.0}], indirect=True)
def test_a_board_with_a_power_on_default_ramps_from_it(board: Board) -> None:
    cal = board.cal
    # Before any command the servos are limp: the physics target follows the joint.
    np.testing.assert_array_equal(board.runner._servo_targets(time.monotonic()), board.true_rad)
    board.safety.command(cal.nominal_rad, UPRIGHT, 5.0, time.monotonic())
    move = board.next_move(1)
    default = cal.pulses_to_angles(np.full(len(cal.channels), 1500.0))
    nominal = cal.pulses_to_angles(np.rint(cal.angles_to_pulses(cal.nominal_rad)))
    np.testing.assert_allclose(board.target(move.received_s), default, rtol=0, atol=1e-12)
    np.testing.assert_allclose(board.target(move.received_s + cal.startup_move_ms / 2000), (default + nominal) / 2,
                               rtol=0, atol=1e-9)
    board.safety.shutdown()
