"""No run destroys an earlier run's latency log: a failed start touches no file, the default
name is fresh every run, and an existing ``--log PATH`` is refused before anything starts."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import free_udp_port, write_quick_calibration

from robotd.daemon.run import RunConfig, run_daemon
from robotd.logs.log_path import LogPathError, check_log_path, claim_log_path, default_log_path
from sim.board_emulator import BoardEmulator

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = '{"type":"header","schema":1}\n' + '{"type":"loop","seq":0}\n' * 1000


def _run_cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "robotd.cli", "run", "--udp", "127.0.0.1:0", *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_failed_start_leaves_an_earlier_log_alone(tmp_path: Path) -> None:
    """No board on the port: the previous run's log (old default name) is untouched, no new file."""
    (tmp_path / "latency.log").write_text(PREVIOUS)
    proc = _run_cli(tmp_path, "--port", str(tmp_path / "no-such-tty"), "--duration", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "latency.log").read_text() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.log"]


def test_existing_log_path_is_refused_before_the_board_is_touched(tmp_path: Path) -> None:
    log = tmp_path / "mine.log"
    log.write_text(PREVIOUS)
    with BoardEmulator() as emulator:
        proc = _run_cli(tmp_path, "--port", emulator.path, "--log", str(log), "--duration", "1")
        assert emulator.handshakes == 0 and emulator.moves_received == 0
    assert proc.returncode == 2 and "already exists" in proc.stderr and str(log) in proc.stderr, proc.stderr
    assert log.read_text() == PREVIOUS


def test_handshake_failure_creates_no_log(tmp_path: Path) -> None:
    log = tmp_path / "new.log"
    with BoardEmulator(silent=True) as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), log_path=str(log),
                        duration_s=1.0, handshake_timeout_s=0.2)
        with pytest.raises(ConnectionError):
            asyncio.run(run_daemon(cfg, out=io.StringIO()))
    assert not log.exists()


def test_successful_run_says_where_the_log_went(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    out = io.StringIO()
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), log_path=str(log),
                        duration_s=0.3, calibration_path=str(write_quick_calibration(tmp_path)))
        asyncio.run(run_daemon(cfg, out=out))
    assert f"latency log: {log}" in out.getvalue()
    lines = log.read_text().splitlines()
    assert '"handshake' in log.read_text()  # the events from before the log existed are in it
    assert lines[0].startswith('{"type":"header"') and '"type":"summary"' in lines[-1]


def test_default_names_are_fresh_and_numbered(tmp_path: Path) -> None:
    first = default_log_path(tmp_path, now_unix=1_700_000_000)
    assert first.parent == tmp_path and first.name.startswith("latency-") and first.suffix == ".log"
    claim_log_path(first)
    second = default_log_path(tmp_path, now_unix=1_700_000_000)
    assert second != first and second.name == first.stem + "-1.log"
    with pytest.raises(LogPathError, match="already exists"):
        check_log_path(first)
    with pytest.raises(LogPathError, match="appeared"):
        claim_log_path(first)
    with pytest.raises(LogPathError, match="does not exist"):
        check_log_path(tmp_path / "missing" / "x.log")


def test_start_up_and_health_lines_name_format_senders_calibration_and_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    out = io.StringIO()
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), log_path=str(log),
                        duration_s=0.5, health_period_s=0.1, calibration_path=str(write_quick_calibration(tmp_path)))
        asyncio.run(run_daemon(cfg, out=out))
    text = out.getvalue()
    assert "listening for auto" not in text and "listening for any supported format (auto-detect)" in text
    assert "(senders: first-sender)" in text and f"calibration {tmp_path / 'robot.toml'};" in text
    health = [line for line in text.splitlines() if " rate " in line and " | rx ok=" in line]
    assert health and all(line.endswith("| log ok") and "from=first-sender" in line for line in health), text


def test_a_receiver_that_dies_ends_the_run_in_the_safe_pose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No phone data can arrive again: the run stops (safe pose) and says why, at once."""
    import time

    import numpy as np

    from calibration import load_calibration
    from robotd.phone.receiver import PhoneReceiver

    async def dead_receive_loop(self) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("socket layer gone")

    monkeypatch.setattr(PhoneReceiver, "_receive_loop", dead_receive_loop)
    cal_path = write_quick_calibration(tmp_path)
    cal = load_calibration(cal_path)
    out = io.StringIO()
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), log_path=None,
                        duration_s=30.0, calibration_path=str(cal_path))
        t0 = time.monotonic()
        summary = asyncio.run(run_daemon(cfg, out=out))
        elapsed_s = time.monotonic() - t0
        assert emulator.wait_for(lambda em: em.moves_received >= 2, 5.0)
        last = emulator.moves[-1]
    assert elapsed_s < 10  # not the 30 s duration
    assert summary.stopped_early is not None and "socket layer gone" in summary.stopped_early
    assert any(line.startswith("STOPPED EARLY: the phone receiver stopped") for line in summary.lines())
    assert "[robotd] receiver_stopped" in out.getvalue()
    safe = dict(zip(cal.channels.tolist(), np.rint(cal.angles_to_pulses(cal.safe_rad)).astype(int).tolist()))
    assert last.pulses_us == safe and last.time_ms is not None


def test_a_rotating_log_is_refused_when_a_segment_name_is_taken(tmp_path: Path) -> None:
    """With --log-max-mb a run may write run.1.log.zst, run.2.log.zst ...: one that exists already
    makes the path refused (before the board is touched); the default name skips such a stamp."""
    log = tmp_path / "run.log.zst"
    (tmp_path / "run.3.log.zst").write_bytes(b"an earlier run's")
    assert check_log_path(log) == log  # not rotating: only the path itself matters
    with pytest.raises(LogPathError, match="run.3.log.zst already exists"):
        check_log_path(log, rotating=True)
    with BoardEmulator() as emulator:
        proc = _run_cli(tmp_path, "--port", emulator.path, "--log", str(log), "--log-max-mb", "1", "--duration", "1")
        assert emulator.handshakes == 0
    assert proc.returncode == 2 and "rotated segment" in proc.stderr, proc.stderr
    assert (tmp_path / "run.3.log.zst").read_bytes() == b"an earlier run's" and not log.exists()

    first = default_log_path(tmp_path, now_unix=1_700_000_000, suffix=".log.zst")
    assert first.name.startswith("latency-") and first.name.endswith(".log.zst")
    (tmp_path / first.name.replace(".log.zst", ".1.log.zst")).write_bytes(b"x")
    assert default_log_path(tmp_path, now_unix=1_700_000_000, suffix=".log.zst").name == \
        first.name.replace(".log.zst", "-1.log.zst")


def test_a_zst_log_path_gives_a_compressed_rotated_log(tmp_path: Path) -> None:
    """--log NAME.zst through the daemon: claimed only at the start, zstd frames, rotated files
    that read back as one run."""
    from robotd.logs.log_files import ZSTD_MAGIC
    from robotd.logs.logread import read_log

    log = tmp_path / "run.log.zst"
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), log_path=str(log),
                        log_max_mb=0.002, duration_s=1.0, calibration_path=str(write_quick_calibration(tmp_path)))
        asyncio.run(run_daemon(cfg, out=io.StringIO()))
    run = read_log(log)
    assert len(run.segments) >= 2 and all(s.compressed for s in run.segments), run.segments
    assert all(s.path.read_bytes()[:4] == ZSTD_MAGIC for s in run.segments)
    assert run.summary is not None and not run.warnings and run.seq.tolist() == list(range(run.n_ticks))
    assert any(e.name == "handshake_ok" for e in run.events)  # the events from before the log existed
