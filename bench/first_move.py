"""How fast the simulated joints move during the board's first timed move (the start-up move).

The robot hangs limp on its string for 1 s (the board has sent nothing), then the board gets
the daemon's start-up move: every channel to the nominal pose over ``startup_move_ms``. Prints
the peak joint speed during that move, for the board model of ``sim/robot_process.py``: a jump
(default; the board ignores ``T`` on a channel's first command) or a ramp from a power-on
default pulse. The physics is stepped directly (no real-time loop, no daemon).

    python bench/first_move.py [--from-us 1500]
"""

from __future__ import annotations

import argparse

import numpy as np

from sim.board_emulator import ReceivedMove
from sim.robot_process import SimRobotConfig, SimulatedRobotRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-us", type=float, default=None, help="power-on default pulse the first move ramps from")
    parser.add_argument("--hang-s", type=float, default=1.0)
    args = parser.parse_args()
    runner = SimulatedRobotRunner(SimRobotConfig(pushes=None, first_move_from_us=args.from_us))
    cal, robot = runner.cal, runner.robot
    dt_s, t_s = 0.002, 0.0
    for _ in range(int(args.hang_s / dt_s)):
        robot.set_targets(runner._servo_targets(t_s))
        robot.step(dt_s)
        t_s += dt_s
    pulses = {int(ch): int(p) for ch, p in zip(cal.channels, np.rint(cal.angles_to_pulses(cal.nominal_rad)))}
    runner._moves.put(ReceivedMove(t_s, pulses, int(cal.startup_move_ms), None, b""))
    runner._apply_moves(t_s)
    peak = np.zeros(len(robot.biped.dof_adr))
    for _ in range(int(cal.startup_move_ms / 1000 / dt_s)):
        robot.set_targets(runner._servo_targets(t_s))
        robot.step(dt_s)
        t_s += dt_s
        peak = np.maximum(peak, np.abs(robot.data.qvel[robot.biped.dof_adr]))
    model = "a jump" if args.from_us is None else f"a ramp from {args.from_us:g} us"
    print(f"first move ({model}, T={cal.startup_move_ms} ms) after {args.hang_s:g} s limp: peak joint speed "
          f"{peak.max():.2f} rad/s (median over joints {np.median(peak):.2f}); slew limit "
          f"{cal.safety.max_slew_rad_s:g} rad/s")


if __name__ == "__main__":
    main()
