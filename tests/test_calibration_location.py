"""The robot's calibration lives in the user's config directory, not in the installed package:
every command finds it the same way, and the packaged file is only the template."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from calibration import (
    TEMPLATE_CALIBRATION_PATH,
    calibration_to_update,
    find_calibration,
    load_calibration,
    user_calibration_path,
)
from sim.board_emulator import BoardEmulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def test_lookup_order(config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = config_home / "robotd" / "robot.toml"
    assert user_calibration_path() == user
    assert find_calibration() == TEMPLATE_CALIBRATION_PATH  # nothing calibrated yet: the template
    assert calibration_to_update() == user  # ... but saves go to the user's file
    user.parent.mkdir(parents=True)
    user.write_text(TEMPLATE_CALIBRATION_PATH.read_text().replace("mass_kg = 1.9", "mass_kg = 2.1"))
    assert find_calibration() == user and load_calibration().mass_kg == 2.1
    assert find_calibration(tmp_path / "mine.toml") == tmp_path / "mine.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_calibration_path() == tmp_path / "home" / ".config" / "robotd" / "robot.toml"


def test_calibrate_saves_to_the_user_file_and_run_reads_it(config_home: Path, tmp_path: Path) -> None:
    template_before = TEMPLATE_CALIBRATION_PATH.read_bytes()
    user = config_home / "robotd" / "robot.toml"
    with BoardEmulator() as emulator:
        trim = subprocess.run(
            [sys.executable, "-m", "robotd.cli", "calibrate", "trim", "--port", emulator.path, "--joint", "neck_yaw"],
            input="+++c" + "s" + "q", capture_output=True, text=True, timeout=60, cwd=REPO)
    assert trim.returncode == 0, trim.stdout + trim.stderr
    assert f"created {user} from the packaged template" in trim.stderr
    assert f"saved neck_yaw to {user}" in trim.stdout
    assert TEMPLATE_CALIBRATION_PATH.read_bytes() == template_before  # the package is never written
    assert load_calibration(user).joint("neck_yaw").neutral_us == 1500 + 30

    with BoardEmulator() as emulator:
        run = subprocess.run(
            [sys.executable, "-m", "robotd.cli", "run", "--port", emulator.path, "--udp", "127.0.0.1:0",
             "--log", "", "--duration", "0.2"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"[robotd] calibration {user};" in run.stderr


def test_dry_run_creates_nothing(config_home: Path) -> None:
    with BoardEmulator() as emulator:
        proc = subprocess.run(
            [sys.executable, "-m", "robotd.cli", "calibrate", "trim", "--port", emulator.path, "--dry-run"],
            input="+cs" + "qq", capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"calibration {TEMPLATE_CALIBRATION_PATH}" in proc.stderr
    assert not config_home.exists()
