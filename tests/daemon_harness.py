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


def write_random_rwkv_checkpoint(path: Path) -> Path:
    """A randomly initialised RWKV Q-network checkpoint (random weights: every path does work).

    Writing one needs torch (the test environment has it); running it does not."""
    from policies.checkpoint import ArchConfig
    from policies.recurrent_baselines import build_network, save_network_checkpoint
    from policies.rwkv import randomize_parameters
    from sim.observation import ObservationSpec

    spec = ObservationSpec()
    net = build_network(ArchConfig(kind="rwkv4", obs_dim=spec.size, n_actions=spec.n_actions, n_bins=spec.n_bins))
    randomize_parameters(net, scale=0.5, seed=3)
    return save_network_checkpoint(path, net, spec, load_calibration().identity)


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
