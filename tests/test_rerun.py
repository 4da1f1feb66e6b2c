"""Replay --rerun: a run's logged phone readings reproduce its orientation and actions exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_harness import free_udp_port, run_against_emulator, write_quick_calibration

from robotd.daemon.run import RunConfig
from robotd.commands.replay import main as replay_main
from sim.board_emulator import BoardEmulator


@pytest.fixture(scope="module", params=["sensagram", "hyperimu:acc,gyro"])
def run_log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s PD run; sensagram carries a rotation vector, HyperIMU only accel+gyro (the AHRS path)."""
    directory = tmp_path_factory.mktemp("rerun")
    log_path = directory / "latency.log"
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(),
                        phone_format=request.param, policy="pd", log_path=str(log_path), duration_s=2.0,
                        calibration_path=str(write_quick_calibration(directory)))
        run_against_emulator(cfg, emulator, request.param)
    return log_path


def test_same_policy_reproduces_exactly(run_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main([str(run_log), "--rerun", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reproduced"] and report["same_policy"]
    assert report["ticks_with_action"] > 50
    assert report["identical_actions"] == report["ticks_with_action"]
    assert report["identical_orientation"] == report["orientation_compared"] > 50


def test_other_policy_shows_where_it_differs(run_log: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "diff.png"
    assert replay_main([str(run_log), "--rerun", "--policy", "hold", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["same_policy"] and report["identical_actions"] < report["ticks_with_action"]
    assert report["per_joint_max_abs_diff"]["r_hip_pitch"] > 0.01  # PD leaned on the hips, hold did not
    assert report["per_joint_max_abs_diff"]["r_knee"] == 0.0  # neither policy moves the knees
    assert report["spans"]
    from robotd.commands.rerun import main as rerun_main

    assert rerun_main([str(run_log), "--policy", "hold", "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 10_000


def test_tampered_log_is_not_reproduced(run_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The check can fail: change one logged action and the re-run must say so."""
    lines = run_log.read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") == "loop" and record["mode"] == "run" and record["seq"] > 60:
            record["action"][1] += 0.25
            lines[i] = json.dumps(record)
            break
    tampered = tmp_path / "tampered.log"
    tampered.write_text("\n".join(lines) + "\n")
    assert replay_main([str(tampered), "--rerun"]) == 1
    assert "NOT reproduced" in capsys.readouterr().out


def test_a_policy_with_another_contract_is_compared_by_the_targets_it_sends(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Both policies say action zero, but the logged one's zero is its stance: the servos were
    told another pose, and the report must say so (it said "actions identical on every tick")."""
    import asyncio

    from calibration import load_calibration
    from policies.baselines import HoldPolicy
    from robotd.daemon.run import PreparedRun, run_daemon
    from sim.observation import ObservationSpec
    from sim.phone_stream import PhoneStreamer, swaying_torso

    calibration_path = write_quick_calibration(tmp_path)
    cal = load_calibration(calibration_path)
    stance_hold = HoldPolicy(ObservationSpec(stance_rad=(0.2,) * ObservationSpec().n_actions))
    log_path = tmp_path / "latency.log"
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), phone_format="sensagram",
                        policy="stance-hold", log_path=str(log_path), duration_s=1.5,
                        calibration_path=str(calibration_path))
        with PhoneStreamer(("127.0.0.1", cfg.udp_port), "sensagram", rate_hz=100.0) as phone:
            phone.start(swaying_torso(cal.phone_to_torso))
            asyncio.run(run_daemon(cfg, prepared=PreparedRun(cal, stance_hold)))
    assert replay_main([str(log_path), "--rerun", "--policy", "hold", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identical_actions"] == report["ticks_with_action"] > 20  # zero and zero
    assert report["ticks_with_targets"] == report["ticks_with_action"] and report["identical_targets"] == 0
    assert report["max_abs_target_diff_rad"] == pytest.approx(0.2)
    assert report["per_joint_max_abs_target_diff_rad"]["r_knee"] == pytest.approx(0.2)
    assert report["per_joint_max_abs_target_diff_rad"]["neck_yaw"] == 0.0
    assert report["contract_differences"] == ["stance_rad"] and report["spans"]
    assert replay_main([str(log_path), "--rerun", "--policy", "hold"]) == 0
    text = capsys.readouterr().out
    assert f"servo targets identical on 0/{report['ticks_with_targets']} ticks; max |diff| 0.2 rad" in text
    assert "the policies' contracts differ (stance_rad)" in text and "actions identical" not in text
