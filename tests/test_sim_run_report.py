"""``robotd run --port sim``'s seed and ground truth: what lets runs be compared policy by policy.

``--sim-seed`` fixes the simulated robot's pushes (their own random stream, on a schedule from
the start), so two controllers meet the same pushes; ``--sim-report`` writes the ground truth
the run prints as JSON (``bench/daemon_runs.py`` reads it); ``--sim-task stay-up`` pushes as the
stay-up task does and prints its figures, from the task's own scorer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import free_udp_port

from sim.balance_task import STAY_UP_PUSHES, Push, PushModel, stay_up_line
from sim.robot_process import SimRobotConfig, SimulatedRobotRunner, push_rng
from sim.servo_command import tilt_deg_of_up_z

REPO = Path(__file__).resolve().parents[1]


def _robotd_run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "robotd.cli", "run", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_sim_report_is_the_printed_ground_truth_as_json(tmp_path: Path) -> None:
    report_path = tmp_path / "truth.json"
    proc = _robotd_run("--port", "sim", "--duration", "2", "--policy", "hold", "--log", "", "--sim-seed", "3",
                       "--sim-report", str(report_path), "--udp", f"127.0.0.1:{free_udp_port()}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    truth = json.loads(report_path.read_text())
    assert 1.5 < truth["sim_time_s"] < 4.0
    assert 0.0 <= truth["upright_s"] <= truth["sim_time_s"] + 1e-9
    assert truth["worst_tilt_deg"] == tilt_deg_of_up_z(truth["min_up_z"])
    assert truth["moves_received"] > 0 and truth["datagrams_sent"] > 0
    # The same figures as the printed line, not a second computation of them.
    printed = next(line for line in proc.stdout.splitlines() if line.startswith("ground truth:"))
    assert f"upright (< 10 deg) {truth['upright_s']:.1f} of {truth['sim_time_s']:.1f} s" in printed
    assert f"mean tilt {truth['mean_tilt_deg']:.1f} deg" in printed
    assert f"falls (> 45 deg) {truth['falls']}, worst tilt {truth['worst_tilt_deg']:.0f} deg" in printed
    assert f"{truth['pushes']} pushes" in printed
    # The stay-up figures are in the JSON; only --sim-task stay-up prints them.
    assert truth["task"] == "balance" and truth["stay_up"]["judged_s"] == 0.0
    assert not any(line.startswith("stay-up:") for line in proc.stdout.splitlines())


def test_sim_task_stay_up_pushes_and_scores_as_the_task(tmp_path: Path) -> None:
    report_path = tmp_path / "truth.json"
    proc = _robotd_run("--port", "sim", "--duration", "6", "--policy", "hold", "--log", "", "--sim-seed", "3",
                       "--sim-task", "stay-up", "--sim-report", str(report_path),
                       "--udp", f"127.0.0.1:{free_udp_port()}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    truth = json.loads(report_path.read_text())
    assert truth["task"] == "stay-up"
    # The task's pushes on the seed's schedule: the first at t = 4 s, the next 2-4 s later.
    planned = STAY_UP_PUSHES.schedule(push_rng(3), truth["sim_time_s"])
    assert truth["pushes"] == len(planned) >= 1 and planned[0].start_s == 4.0
    figures = truth["stay_up"]
    assert figures["judged_s"] == pytest.approx(truth["sim_time_s"] - 4.0, abs=0.05)
    assert 0.0 <= figures["standing_fraction"] <= 1.0 and figures["get_ups"] <= figures["knock_downs"]
    printed = next(line for line in proc.stdout.splitlines() if line.startswith("stay-up:"))
    assert printed == (f"{stay_up_line(figures['standing_fraction'], figures['knock_downs'], figures['get_ups'])}, "
                       f"falls (fall rule) {figures['falls']}")


def test_sim_options_are_refused_on_a_real_port(tmp_path: Path) -> None:
    proc = _robotd_run("--port", str(tmp_path / "ttyACM9"), "--sim-report", str(tmp_path / "t.json"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "robotd run: --sim-seed, --sim-report and --sim-task only apply to --port sim"
    proc = _robotd_run("--port", str(tmp_path / "ttyACM9"), "--sim-task", "stay-up", cwd=tmp_path)
    assert proc.returncode == 2 and "only apply to --port sim" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no log, no report


@dataclass(frozen=True)
class RecordingPushes(PushModel):
    """The simulated robot's push model, keeping every push it draws."""

    drawn: list[Push] = field(default_factory=list, compare=False)

    def draw(self, rng: np.random.Generator, start_s: float) -> Push:
        push = super().draw(rng, start_s)
        self.drawn.append(push)
        return push


def _pushes(phone_rate_hz: float, seed: int) -> list[Push]:
    pushes = RecordingPushes(interval_s=(0.1, 0.2))
    runner = SimulatedRobotRunner(SimRobotConfig(udp_target=("127.0.0.1", free_udp_port()), seed=seed,
                                                 phone_rate_hz=phone_rate_hz, pushes=pushes))
    runner.run(duration_s=1.2)
    return pushes.drawn


def test_a_seed_gives_the_same_pushes_whatever_else_draws_random_numbers() -> None:
    # Half the phone rate: half the packet-latency draws, which used to share the pushes' stream.
    fast, slow, other_seed = _pushes(100.0, seed=5), _pushes(50.0, seed=5), _pushes(100.0, seed=6)
    n = min(len(fast), len(slow))
    assert n >= 4 and abs(len(fast) - len(slow)) <= 1  # the last one may fall either side of the end
    assert [p.force_xy_n for p in fast[:n]] == [p.force_xy_n for p in slow[:n]]
    # ... and they are the seed's schedule, which a test or a bench can compute without a run.
    planned = RecordingPushes(interval_s=(0.1, 0.2)).schedule(push_rng(5), 10.0)
    assert [p.force_xy_n for p in planned[:n]] == [p.force_xy_n for p in fast[:n]]
    # Times are the schedule's (from the start), not drawn after whenever the last push landed.
    offsets = [np.array([p.start_s for p in run[:n]]) - run[0].start_s for run in (fast, slow)]
    np.testing.assert_allclose(offsets[0], offsets[1], atol=0.05)
    assert [p.force_xy_n for p in other_seed[:n]] != [p.force_xy_n for p in fast[:n]]
