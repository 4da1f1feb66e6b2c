"""The base install (``pip install robotd``, no extras) runs the daemon on the robot's computer.

A fresh venv gets a real install of this tree without extras; its ``robotd run`` then drives
the board emulator (a real pty, in this process) from a phone stream over real UDP with an
RWKV checkpoint policy, writes a compressed, rotated log that its ``robotd replay`` reads (and
re-runs bit for bit), and torch,
MuJoCo, gymnasium, optuna, scipy and matplotlib are not importable there. A command that needs
an extra says which one.

It takes ~20-40 s (the install: pip's cache holds the wheels after the test environment's own
install) and runs in the default suite: the install split is only worth something if CI
catches the day a base-path module starts importing an extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import free_udp_port, write_quick_calibration, write_random_rwkv_checkpoint

from calibration import load_calibration
from robotd.logs.logread import read_log
from sim.board_emulator import BoardEmulator
from sim.phone_stream import PhoneStreamer, swaying_torso

REPO = Path(__file__).resolve().parents[1]
EXTRA_MODULES = ("torch", "mujoco", "gymnasium", "optuna", "scipy", "matplotlib", "foxglove", "mcap")


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("base")
    # A copy of the tree: setuptools builds in the source directory (build/, *.egg-info).
    source = shutil.copytree(REPO, base / "src", ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], capture_output=True,
                             text=True, timeout=600, env=_clean_env())
    assert install.returncode == 0, f"base install failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}"
    return venv


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: the venv must run its installed copy, not this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _robotd(venv: Path, *args: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "robotd"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout_s, env=_clean_env())


def test_base_install_has_no_extra(base_venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.util as u, json; "
            f"print(json.dumps([m for m in {EXTRA_MODULES!r} if u.find_spec(m) is not None]))")
    out = subprocess.run([str(base_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=_clean_env(), check=True).stdout
    assert json.loads(out) == []


def test_base_install_runs_the_daemon_with_a_checkpoint(base_venv: Path, tmp_path: Path) -> None:
    calibration = write_quick_calibration(tmp_path)
    checkpoint = write_random_rwkv_checkpoint(tmp_path / "rwkv.safetensors")
    log_path = tmp_path / "run.log.zst"
    udp_port = free_udp_port()
    with BoardEmulator() as emulator, PhoneStreamer(("127.0.0.1", udp_port), "sensagram", rate_hz=100.0) as phone:
        phone.start(swaying_torso(load_calibration(calibration).phone_to_torso))
        run = _robotd(base_venv, "run", "--port", emulator.path, "--udp", f"127.0.0.1:{udp_port}",
                      "--phone-format", "sensagram", "--allow", "127.0.0.1", "--policy", str(checkpoint),
                      "--duration", "2.5", "--calibration", str(calibration), "--log", str(log_path),
                      "--log-max-mb", "0.01", cwd=tmp_path)
        moves = list(emulator.moves)
    assert run.returncode == 0, run.stderr
    assert "policy errors 0" in run.stdout and "falls 0" in run.stdout
    assert len(moves) > 2 and emulator.framing_errors == 0  # the start-up move, then the policy's
    log = read_log(log_path)  # and run.1.log.zst, run.2.log.zst, ...: rotated every 10 kB
    assert len(log.segments) > 2 and all(s.compressed for s in log.segments) and not log.warnings
    assert log.seq.tolist() == list(range(log.n_ticks))
    assert log.header["policy"]["name"] == "rwkv4" and log.summary is not None
    assert log.mode_is("run").sum() > 30  # it followed the checkpoint, not just the start-up move

    report = _robotd(base_venv, "replay", str(log_path), "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["run"]["ticks"] == log.n_ticks
    rerun = _robotd(base_venv, "replay", str(log_path), "--rerun", cwd=tmp_path)
    assert rerun.returncode == 0 and "REPRODUCED exactly" in rerun.stdout, rerun.stdout + rerun.stderr


@pytest.mark.parametrize("args,extra", [
    (["rollout", "--policy", "pd", "--out", "x.gif"], "sim"),
    (["run", "--port", "sim", "--duration", "1"], "sim"),
    (["replay", "LOG", "--plot", "x.png"], "plot"),
], ids=["rollout", "run-sim", "replay-plot"])
def test_commands_name_the_extra_they_need(base_venv: Path, tmp_path: Path, args: list[str], extra: str) -> None:
    log = tmp_path / "l.log"
    log.write_text('{"type":"header","schema":1}\n')
    result = _robotd(base_venv, *[str(log) if a == "LOG" else a for a in args], cwd=tmp_path)
    assert result.returncode == 2
    assert f"pip install 'robotd[{extra}]'" in result.stderr and "Traceback" not in result.stderr, result.stderr
