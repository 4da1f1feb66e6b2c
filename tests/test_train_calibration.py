"""`robotd train` trains for one robot: its calibration's limits, dead time and identity."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from calibration import TEMPLATE_CALIBRATION_PATH, load_calibration
from robotd.daemon.policy_select import load_policy
from sim.env import balance_task_config, centred_actuator_delay, undelayed_push_config

REPO = Path(__file__).resolve().parent.parent
TINY_SIM = ("learning_starts = 200\nbatch_size = 4\neval_episodes = 1\nsteps_per_round = 100\nd = 16\n"
            "n_layers = 1\nburn_in = 4\ntrain_len = 8\neval_every_steps = 200\ncheckpoint_every_steps = 200\n"
            "num_envs = 1\n")


def _robot_calibration(directory: Path, dead_time_ms: float) -> Path:
    """The template with another measured dead time: another robot, another identity."""
    path = directory / "my_robot.toml"
    path.write_text(TEMPLATE_CALIBRATION_PATH.read_text().replace("dead_time_ms = 100.0",
                                                                   f"dead_time_ms = {dead_time_ms}"))
    return path


def _mismatches(policy: str, calibration: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_policy(policy, load_calibration(calibration))
    return [str(w.message) for w in caught]


def test_the_delay_range_is_centred_on_the_dead_time_and_keeps_its_width():
    task = balance_task_config()
    low, high = task.randomization.actuator_delay_ms
    assert centred_actuator_delay(task, 200.0).randomization.actuator_delay_ms == (200 - (high - low) / 2,
                                                                                 200 + (high - low) / 2)
    assert centred_actuator_delay(task, 20.0).randomization.actuator_delay_ms == (0.0, high - low)
    assert centred_actuator_delay(task, 390.0).randomization.actuator_delay_ms == (400.0 - (high - low), 400.0)
    assert centred_actuator_delay(undelayed_push_config(), 120.0).randomization.actuator_delay_ms == (0.0, 0.0)


def test_a_run_trained_for_a_calibration_runs_under_it_without_a_warning(tmp_path):
    cal = _robot_calibration(tmp_path, dead_time_ms=150.0)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_SIM)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "robotd.cli", "train", "--sim", "--calibration", str(cal),
                          "--steps", "400", "--config", str(config), "--out", str(run), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"calibration {cal}" in out.stdout and "actuator delay 65-235 ms" in out.stdout
    assert tomllib.loads((run / "config.toml").read_text())["calibration"] == str(cal.resolve())
    from robotd.commands.train import _parser, resolve_config

    resumed, _, _ = resolve_config(_parser().parse_args(["--resume", str(run), "--steps", "100"]))
    assert resumed.calibration == str(cal.resolve())
    with pytest.raises(ValueError, match="--calibration: a resumed run keeps its own config.toml"):
        resolve_config(_parser().parse_args(["--resume", str(run), "--calibration", str(cal)]))
    policy = str(run / "best.safetensors")
    assert _mismatches(policy, cal) == []
    assert any("was trained with calibration" in m for m in _mismatches(policy, TEMPLATE_CALIBRATION_PATH))


def test_the_default_calibration_is_the_one_robotd_run_reads(tmp_path, monkeypatch):
    from robotd.commands.train import _parser, resolve_config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    args = ["--sim", "--out", str(tmp_path / "r")]
    assert resolve_config(_parser().parse_args(args))[0].calibration == str(TEMPLATE_CALIBRATION_PATH.resolve())
    user = tmp_path / "config" / "robotd" / "robot.toml"
    user.parent.mkdir(parents=True)
    _robot_calibration(user.parent, 120.0).rename(user)
    assert resolve_config(_parser().parse_args(args))[0].calibration == str(user)


@pytest.mark.parametrize("args, message", [
    (["--sim", "--calibration", "nosuch.toml"], "robotd train: nosuch.toml: <file>: no such file"),
    (["--env", "CartPole-v1", "--calibration", "x.toml"],
     "robotd train: --calibration: applies to the robot's envs only, not CartPole-v1"),
])
def test_a_bad_calibration_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    from robotd.commands.train import main

    assert main([*args, "--steps", "100", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "run").exists()
