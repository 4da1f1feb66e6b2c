"""Shared pieces for tests that run the whole daemon in-process against the board emulator."""

from __future__ import annotations

import asyncio
import math
import socket
from pathlib import Path

import numpy as np

from calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from robotd.daemon import RunConfig, RunSummary, run_daemon
from sim.board_emulator import BoardEmulator
from sim.phone_stream import PhoneStreamer, phone_sample


def write_quick_calibration(directory: Path) -> Path:
    """The shipped calibration with a 300 ms start-up move, so runs get to the policy quickly."""
    path = directory / "robot.toml"
    path.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("startup_move_ms = 2000", "startup_move_ms = 300"))
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def swaying_torso(phone_to_torso: np.ndarray):
    """Torso pitching +-0.15 rad at 0.5 Hz: enough for the PD policy to move the legs."""
    def sample_at(t: float):
        pitch = 0.15 * math.sin(2 * math.pi * 0.5 * t)
        rate = 0.15 * 2 * math.pi * 0.5 * math.cos(2 * math.pi * 0.5 * t)
        quat = (math.cos(pitch / 2), 0.0, math.sin(pitch / 2), 0.0)
        return phone_sample(t, quat, (0.0, rate, 0.0), phone_to_torso)
    return sample_at


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
