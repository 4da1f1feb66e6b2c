"""Shared pieces for tests that run the whole daemon in-process against the board emulator."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from robotd.daemon import RunConfig, RunSummary, run_daemon
from sim.board_emulator import BoardEmulator
from sim.phone_stream import PhoneStreamer, swaying_torso


def write_quick_calibration(directory: Path) -> Path:
    """The shipped calibration with a 300 ms start-up move, so runs get to the policy quickly."""
    path = directory / "robot.toml"
    path.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("startup_move_ms = 2000", "startup_move_ms = 300"))
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_against_emulator(cfg: RunConfig, emulator: BoardEmulator, stream_format: str | None,
                         rate_hz: float = 100.0) -> RunSummary:
    """Run the daemon to the end of ``cfg.duration_s`` with a swaying phone streaming to it."""
    cal = load_calibration(cfg.calibration_path)
    streamer = PhoneStreamer(("127.0.0.1", cfg.udp_port), stream_format, rate_hz=rate_hz) if stream_format else None
    if streamer is not None:
        streamer.start(swaying_torso(cal.phone_to_torso))
    try:
        return asyncio.run(run_daemon(cfg))
    finally:
        if streamer is not None:
            streamer.close()
