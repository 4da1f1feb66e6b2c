"""Shared pieces for tests that run the whole daemon in-process against the board emulator."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from robotd.daemon.run import RunConfig, RunSummary, run_daemon
from sim.board_emulator import BoardEmulator
from sim.phone_stream import PhoneStreamer, swaying_torso

REPO = Path(__file__).resolve().parents[1]


def write_quick_calibration(directory: Path) -> Path:
    """The shipped calibration with a 300 ms start-up move, so runs get to the policy quickly."""
    path = directory / "robot.toml"
    path.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("startup_move_ms = 2000", "startup_move_ms = 300"))
    return path


def write_random_rwkv_checkpoint(path: Path) -> Path:
    """A randomly initialised RWKV Q-network checkpoint (random weights: every path does work).

    Writing one needs torch (the test environment has it); running it does not."""
    from policies.checkpoint import ArchConfig
    from policies.networks import build_network, save_network_checkpoint
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


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def daemon_process(tmp_path: Path, duration_s: float, foxglove: bool = False,
                   rate_hz: float = 50.0) -> Iterator[tuple[subprocess.Popen, str | None, Path]]:
    """``python -m robotd.cli run`` (PD policy) against the board emulator for ``duration_s``, a
    swaying SensaGram phone streaming to it; with ``foxglove``, ``--foxglove`` on a free port.
    Yields (process, ws:// URL or None, log path); on leaving, the run must have ended with 0."""
    calibration = write_quick_calibration(tmp_path)
    udp_port, ws_port = free_udp_port(), free_tcp_port()
    log_path = tmp_path / "run.log"
    stderr = tmp_path / "daemon.err"
    argv = [sys.executable, "-m", "robotd.cli", "run", "--udp", f"127.0.0.1:{udp_port}", "--phone-format", "sensagram",
            "--allow", "127.0.0.1", "--policy", "pd", "--duration", f"{duration_s:g}", "--rate", f"{rate_hz:g}",
            "--calibration", str(calibration), "--log", str(log_path)]
    if foxglove:
        argv += ["--foxglove", f":{ws_port}"]
    with BoardEmulator() as emulator, PhoneStreamer(("127.0.0.1", udp_port), "sensagram", rate_hz=100.0) as phone, \
            open(stderr, "wb") as err:
        phone.start(swaying_torso(load_calibration(calibration).phone_to_torso))
        proc = subprocess.Popen([*argv, "--port", emulator.path], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        try:
            yield proc, f"ws://127.0.0.1:{ws_port}" if foxglove else None, log_path
            assert proc.wait(timeout=duration_s + 30) == 0, stderr.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    if foxglove:
        assert f"foxglove: ws://127.0.0.1:{ws_port}" in stderr.read_text()  # loopback unless told otherwise
