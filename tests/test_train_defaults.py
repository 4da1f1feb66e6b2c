"""`robotd train --sim` trains like the shipped policy: around its stance, with its recipe."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

from policies.qlearning import Learner, QLearningConfig
from robotd.commands.train import _parser, resolve_config

REPO = Path(__file__).resolve().parent.parent
ROBOT = "robotd/BalanceTaskDiscrete-v0"


def test_the_shipped_recipe_is_the_shipped_policys_run():
    """policies/env_defaults.toml (package data) holds bench/balance_runs/b6.toml, line for line."""
    b6 = tomllib.loads((REPO / "bench" / "balance_runs" / "b6.toml").read_text())
    assert QLearningConfig.env_defaults(ROBOT) == b6


def test_train_sim_takes_the_stance_and_prints_it_but_a_config_replaces_it(tmp_path, capsys):
    cfg, _, _ = resolve_config(_parser().parse_args(["--sim", "--out", str(tmp_path / "r")]))
    b6 = QLearningConfig.env_defaults(ROBOT)
    assert cfg.stance_rad == b6["stance_rad"] and cfg.action_scale_rad == 0.12 and cfg.eval_seed == 3000
    printed = capsys.readouterr().out
    assert printed.startswith(f"robotd train: {ROBOT}'s defaults (policies/env_defaults.toml): action_scale_rad 0.12")
    assert "stance_rad {'r_hip_roll': -0.28" in printed
    config = tmp_path / "c.toml"
    config.write_text("lr = 5e-4\n")
    cfg, _, _ = resolve_config(_parser().parse_args(["--sim", "--config", str(config), "--out", str(tmp_path / "r")]))
    assert cfg.stance_rad is None and cfg.action_scale_rad is None and cfg.lr == 5e-4
    assert capsys.readouterr().out == ""
    assert QLearningConfig().stance_rad is None and QLearningConfig().action_scale_rad is None  # unchanged


def test_the_untrained_default_policy_holds_the_stance(tmp_path):
    """The checkpoint's contract carries the stance, and the learner starts every joint on the
    middle bin (initial_greedy_bin), action zero, which the contract maps to the stance."""
    cfg, _, _ = resolve_config(_parser().parse_args(["--sim", "--out", str(tmp_path / "r")]))
    learner = Learner(dataclasses.replace(cfg, d=16, n_layers=1, replay_capacity_steps=4000), tmp_path / "r")
    spec = learner.robot_spec
    assert dict(zip(spec.controlled_joints, spec.stance_rad)) == cfg.stance_rad
    middle = spec.n_bins // 2
    assert cfg.initial_greedy_bin == middle and spec.bin_levels()[middle] == 0.0


def _robotd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robotd.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def test_robotd_stance_writes_a_recipe_that_robotd_train_takes(tmp_path):
    """One trial (hold, enqueued first), one episode: the search's plumbing, not its figures."""
    out = tmp_path / "stance.toml"
    run = _robotd("stance", "--trials", "1", "--episodes", "1", "--test-episodes", "1", "--out", str(out),
                  "--json", str(tmp_path / "stance.json"))
    assert run.returncode == 0, run.stderr
    assert "trial   0 tuning" in run.stdout and "best posture on the test episodes" in run.stdout
    recipe = tomllib.loads(out.read_text())
    shipped = QLearningConfig.env_defaults(ROBOT)
    assert {k: v for k, v in recipe.items() if k != "stance_rad"} == {k: v for k, v in shipped.items()
                                                                      if k != "stance_rad"}
    assert recipe["stance_rad"].keys() == shipped["stance_rad"].keys()
    assert all(v == 0.0 for v in recipe["stance_rad"].values())  # hold: the nominal pose
    cfg, _, _ = resolve_config(_parser().parse_args(["--sim", "--config", str(out), "--out", str(tmp_path / "r")]))
    assert cfg.action_scale_rad == 0.12 and cfg.stance_rad == recipe["stance_rad"]
    again = _robotd("stance", "--trials", "1", "--out", str(out))
    assert again.returncode == 2 and again.stderr == f"robotd stance: --out {out}: already exists (--force replaces it)\n"
    missing = _robotd("stance", "--calibration", str(tmp_path / "no.toml"))
    assert missing.returncode == 2 and missing.stderr == f"robotd stance: {tmp_path / 'no.toml'}: <file>: no such file\n"
