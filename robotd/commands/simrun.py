"""``robotd run --port sim``: the real daemon against the simulated robot.

The simulated robot (``sim.robot_process``) runs in its own process with a board emulator on
a real pseudo-terminal and a phone that streams real UDP to the daemon. The daemon is started
exactly as for hardware, with the pty as its port: nothing in it knows it is simulated.
``robotd calibrate --port sim`` starts it the same way, through :func:`start_simulated_robot`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from robotd.daemon.run import PreparedRun, RunConfig, RunSummary, run_daemon, write_summary

#: What the simulated phone sends when the daemon is told to auto-detect.
DEFAULT_SIM_PHONE_FORMAT = "sensagram"
#: The simulated phone lives on this machine: never listen wider for it.
SIM_UDP_HOST = "127.0.0.1"


def start_simulated_robot(udp_port: int, phone_format: str, calibration_path: str | None, out: TextIO,
                          tag: str, task: str = "balance", **config: Any) -> tuple[Any, str]:
    """Start the simulated robot process streaming to ``SIM_UDP_HOST:udp_port``, pushed as ``task``.

    Returns the process (a ``SimulatedRobotProcess``; its ``board_path`` is the daemon's port)
    and the phone format it sends. MuJoCo is imported here, not when this module is.
    """
    from sim.robot_process import SimRobotConfig, SimulatedRobotProcess

    sent_format = DEFAULT_SIM_PHONE_FORMAT if phone_format == "auto" else phone_format
    print(f"[{tag}] starting the simulated robot (phone: {sent_format} over UDP to {SIM_UDP_HOST}:{udp_port})",
          file=out, flush=True)
    robot = SimulatedRobotProcess(SimRobotConfig.for_task(task, udp_target=(SIM_UDP_HOST, udp_port),
                                                          phone_format=sent_format,
                                                          calibration_path=calibration_path, **config))
    return robot, sent_format


def daemon_config_for(cfg: RunConfig, robot: Any) -> RunConfig:
    """``cfg`` aimed at a started simulated robot: its pty as the port, the phone on this machine."""
    return replace(cfg, port=robot.board_path, udp_host=SIM_UDP_HOST, allow=cfg.allow or SIM_UDP_HOST)


def run_with_simulated_robot(cfg: RunConfig, prepared: PreparedRun | None = None, seed: int = 0,
                             report_path: str | None = None, task: str = "balance") -> RunSummary:
    """Start the simulated robot (seeded, pushed as ``task``), run the daemon against it, print
    both summaries.

    With ``report_path``, the robot's ground truth also goes there as JSON, for scripts that
    compare runs (``bench/daemon_runs.py``): the daemon's log never sees the physics.
    """
    robot, _ = start_simulated_robot(cfg.udp_port, cfg.phone_format, cfg.calibration_path, sys.stderr, "robotd",
                                     task, seed=seed)
    try:
        summary = asyncio.run(run_daemon(daemon_config_for(cfg, robot), prepared=prepared))
    except BaseException:
        robot.kill()
        raise
    report = robot.stop()
    write_summary(summary, sys.stdout)
    for line in report.lines():
        print(line)
    if report_path:
        Path(report_path).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return summary
