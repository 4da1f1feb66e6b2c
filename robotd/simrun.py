"""``robotd run --port sim``: the real daemon against the simulated robot.

The simulated robot (``sim.robot_process``) runs in its own process with a board emulator on
a real pseudo-terminal and a phone that streams real UDP to the daemon. The daemon is started
exactly as for hardware, with the pty as its port: nothing in it knows it is simulated.
``robotd calibrate --port sim`` starts it the same way, through :func:`start_simulated_robot`.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any, TextIO

from robotd.daemon import PreparedRun, RunConfig, RunSummary, run_daemon, write_summary

#: What the simulated phone sends when the daemon is told to auto-detect.
DEFAULT_SIM_PHONE_FORMAT = "sensagram"
#: The simulated phone lives on this machine: never listen wider for it.
SIM_UDP_HOST = "127.0.0.1"


def start_simulated_robot(udp_port: int, phone_format: str, calibration_path: str | None, out: TextIO,
                          tag: str, **config: Any) -> tuple[Any, str]:
    """Start the simulated robot process streaming to ``SIM_UDP_HOST:udp_port``.

    Returns the process (a ``SimulatedRobotProcess``; its ``board_path`` is the daemon's port)
    and the phone format it sends. MuJoCo is imported here, not when this module is.
    """
    from sim.robot_process import SimRobotConfig, SimulatedRobotProcess

    sent_format = DEFAULT_SIM_PHONE_FORMAT if phone_format == "auto" else phone_format
    print(f"[{tag}] starting the simulated robot (phone: {sent_format} over UDP to {SIM_UDP_HOST}:{udp_port})",
          file=out, flush=True)
    robot = SimulatedRobotProcess(SimRobotConfig(udp_target=(SIM_UDP_HOST, udp_port), phone_format=sent_format,
                                                 calibration_path=calibration_path, **config))
    return robot, sent_format


def run_with_simulated_robot(cfg: RunConfig, prepared: PreparedRun | None = None) -> RunSummary:
    """Start the simulated robot, run the daemon against it, print both summaries."""
    robot, _ = start_simulated_robot(cfg.udp_port, cfg.phone_format, cfg.calibration_path, sys.stderr, "robotd")
    try:
        daemon_cfg = replace(cfg, port=robot.board_path, udp_host=SIM_UDP_HOST, allow=cfg.allow or SIM_UDP_HOST)
        summary = asyncio.run(run_daemon(daemon_cfg, prepared=prepared))
    except BaseException:
        robot.kill()
        raise
    report = robot.stop()
    write_summary(summary, sys.stdout)
    for line in report.lines():
        print(line)
    return summary
