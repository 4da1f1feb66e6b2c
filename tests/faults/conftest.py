"""Shared rig for the fault and load tests: the real daemon process against the board emulator.

Every case starts ``python -m robotd.cli run`` as a child process (its own interpreter, its
own GIL, real signals), pointed at a :class:`~sim.board_emulator.BoardEmulator` pty (or its
stable ``link_path``) and fed over real UDP on loopback. Figures come from three witnesses
that do not share code: the daemon's latency log (``robotd.logs.logread``), the emulator's record
of every byte it got, and the test's own clock (``time.monotonic`` is CLOCK_MONOTONIC, the
same clock in every process on the machine).

Measured figures are printed as ``FIGURE <case> <name> = <value>`` lines (``pytest -s``
shows them; docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from calibration import DEFAULT_CALIBRATION_PATH, Calibration, load_calibration
from robotd.logs.logread import LogData, read_log
from sim.board_emulator import BoardEmulator, ReceivedMove
from sim.phone_stream import PhoneStreamer

REPO = Path(__file__).resolve().parents[2]
FLOOD_SCRIPT = Path(__file__).with_name("udp_flood.py")
RATE_HZ = 50.0
STARTUP_MS = 300  # the quick calibration's start-up move


def figure(case: str, name: str, value: object) -> None:
    """Print one measured figure in a greppable form."""
    print(f"FIGURE {case} {name} = {value}", flush=True)


def write_calibration(directory: Path, name: str = "robot.toml", **replace: str) -> Path:
    """The shipped calibration with a short start-up move and optional text replacements."""
    text = DEFAULT_CALIBRATION_PATH.read_text().replace("startup_move_ms = 2000", f"startup_move_ms = {STARTUP_MS}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = directory / name
    path.write_text(text)
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_socket_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` (/proc/net/udp ``drops``)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port:
            total += int(cols[-1])
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pulses_of(cal: Calibration, angles_rad: np.ndarray) -> dict[int, int]:
    return dict(zip(cal.channels.tolist(), np.rint(cal.angles_to_pulses(angles_rad)).astype(int).tolist()))


@dataclass
class Daemon:
    """One ``robotd run`` child process."""

    proc: subprocess.Popen
    argv: list[str]
    log_path: Path
    stderr_path: Path
    stdout_path: Path
    udp_port: int
    started_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = 10.0) -> float:
        """Wait for the 'listening' line (handshake done, socket bound); returns its time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "listening for" in self.stderr():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"daemon not listening after {timeout_s} s:\n{self.stderr()}")

    def send(self, sig: int) -> float:
        t = time.monotonic()
        self.proc.send_signal(sig)
        return t

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> LogData:
        return read_log(self.log_path)

    def records(self) -> list[dict]:
        """Every decodable line of the log (tolerates a torn last line)."""
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def events(self, name: str | None = None) -> list[dict]:
        return [r for r in self.records() if r.get("type") == "event" and (name is None or r["event"] == name)]

    def summary(self) -> dict | None:
        recs = [r for r in self.records() if r.get("type") == "summary"]
        return recs[-1] if recs else None


@dataclass
class Rig:
    """Starts daemons (killed at teardown) in ``tmp_path``."""

    tmp_path: Path
    calibration: Path
    cal: Calibration
    daemons: list[Daemon] = field(default_factory=list)
    helpers: list[subprocess.Popen] = field(default_factory=list)

    def start(self, port: str, *extra: str, phone_format: str = "sensagram", allow: str | None = "127.0.0.1",
              rate_hz: float = RATE_HZ, calibration: Path | None = None, log: bool = True,
              udp_port: int | None = None, duration_s: float | None = None, name: str = "latency",
              log_suffix: str = ".log") -> Daemon:
        udp_port = udp_port or free_udp_port()
        log_path = self.tmp_path / f"{name}{log_suffix}"
        argv = [sys.executable, "-m", "robotd.cli", "run", "--port", port, "--udp", f"127.0.0.1:{udp_port}",
                "--phone-format", phone_format, "--policy", "pd", "--rate", f"{rate_hz:g}",
                "--calibration", str(calibration or self.calibration), "--log", str(log_path) if log else ""]
        if allow:
            argv += ["--allow", allow]
        if duration_s:
            argv += ["--duration", f"{duration_s:g}"]
        argv += list(extra)
        n = len(self.daemons)
        stdout_path, stderr_path = self.tmp_path / f"daemon{n}.out", self.tmp_path / f"daemon{n}.err"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO)
        daemon = Daemon(proc, argv, log_path, stderr_path, stdout_path, udp_port, time.monotonic())
        self.daemons.append(daemon)
        return daemon

    def flood(self, udp_port: int, rate: float, seconds: float, source: str = "127.0.0.1",
              pitch_deg: float = 0.0) -> subprocess.Popen:
        """Start tests/faults/udp_flood.py in its own process; ``finish_flood`` reads its result."""
        proc = subprocess.Popen(
            [sys.executable, str(FLOOD_SCRIPT), "--target", f"127.0.0.1:{udp_port}", "--source", source,
             "--rate", f"{rate:g}", "--seconds", f"{seconds:g}", "--pitch-deg", f"{pitch_deg:g}"],
            stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.helpers.append(proc)
        return proc

    @staticmethod
    def finish_flood(proc: subprocess.Popen, timeout_s: float = 60.0) -> dict:
        out, _ = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, out
        return json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        for proc in self.helpers + [d.proc for d in self.daemons]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    calibration = write_calibration(tmp_path)
    r = Rig(tmp_path, calibration, load_calibration(calibration))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[BoardEmulator]:
    with BoardEmulator(link_path=tmp_path / "board") as em:
        yield em


def wait_moves(em: BoardEmulator, n: int, timeout_s: float = 5.0) -> None:
    assert em.wait_for(lambda e: e.moves_received >= n, timeout_s), em.summary()


def is_timed(move: ReceivedMove) -> bool:
    return move.time_ms is not None


def streamer(port: int, fmt: str = "sensagram", rate_hz: float = 100.0, source_host: str = "") -> PhoneStreamer:
    return PhoneStreamer(("127.0.0.1", port), fmt, rate_hz=rate_hz, source_host=source_host)


def lateness_ms(log: LogData, mask: np.ndarray | None = None) -> np.ndarray:
    """How late each tick started after its deadline (ms)."""
    late = (log.t_s - log.deadline_s) * 1e3
    return late if mask is None else late[mask]


def pct(values: np.ndarray, q: float) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else math.nan


def max_slew_step_us(cal: Calibration, rate_hz: float = RATE_HZ) -> np.ndarray:
    """Per channel (calibration order): the largest pulse change one tick's slew limit allows."""
    return np.array([cal.safety.max_slew_rad_s / rate_hz * j.us_per_rad for j in cal.joints])
