"""``robotd run --port sim``: the real daemon against the simulated robot.

The simulated robot (``sim.robot_process``) runs in its own process with a board emulator on
a real pseudo-terminal and a phone that streams real UDP to the daemon. The daemon is started
exactly as for hardware, with the pty as its port: nothing in it knows it is simulated.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

from robotd.daemon import RunConfig, run_daemon, write_summary
from sim.robot_process import SimRobotConfig, SimulatedRobotProcess

#: What the simulated phone sends when the daemon is told to auto-detect.
DEFAULT_SIM_PHONE_FORMAT = "sensagram"


def run_with_simulated_robot(cfg: RunConfig) -> int:
    """Start the simulated robot, run the daemon against it, print both summaries."""
    phone_format = DEFAULT_SIM_PHONE_FORMAT if cfg.phone_format == "auto" else cfg.phone_format
    udp_host = "127.0.0.1"  # the simulated phone lives on this machine: never listen wider for it
    print(f"[robotd] starting the simulated robot (phone: {phone_format} over UDP to {udp_host}:{cfg.udp_port})",
          file=sys.stderr, flush=True)
    robot = SimulatedRobotProcess(SimRobotConfig(udp_target=(udp_host, cfg.udp_port), phone_format=phone_format,
                                                 calibration_path=cfg.calibration_path))
    try:
        daemon_cfg = replace(cfg, port=robot.board_path, udp_host=udp_host, allow=cfg.allow or udp_host)
        summary = asyncio.run(run_daemon(daemon_cfg))
    except BaseException:
        robot.kill()
        raise
    report = robot.stop()
    write_summary(summary, sys.stdout)
    for line in report.lines():
        print(line)
    if cfg.log_path:
        print(f"latency log: {cfg.log_path} (robotd replay {cfg.log_path} --plot latency.png)")
    return 0
