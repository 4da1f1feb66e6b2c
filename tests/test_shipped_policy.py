"""The shipped policy: present, loadable by name as the default, fits the robot, runs torch-free."""

from __future__ import annotations

import json
from pathlib import Path

from calibration import load_calibration
from policies.evaluation import evaluate_policy
from robotd.daemon.policy_select import DEFAULT_POLICY, SHIPPED_POLICIES, load_policy, policy_mismatches

TRAINED = Path(__file__).resolve().parent.parent / "policies" / "trained"


def test_the_default_policy_is_the_shipped_checkpoint_and_fits_the_robot():
    cal = load_calibration()
    assert DEFAULT_POLICY == "balance" and SHIPPED_POLICIES["balance"] == TRAINED / "balance.safetensors"
    policy = load_policy(DEFAULT_POLICY, cal)
    assert policy.identity.startswith("balance.safetensors@") and policy.runtime.arch.kind == "rwkv4"
    assert policy_mismatches(policy, cal) == []
    meta = policy.runtime.meta
    assert meta.training["config"]["env_id"] == "robotd/BalanceTaskDiscrete-v0" and "eval_success" in meta.metrics
    report = evaluate_policy(policy, episodes=1)
    assert report.episodes == 1 and 0.0 <= report.success_rate <= 1.0


def test_the_eval_report_and_curve_ship_beside_it():
    report = json.loads((TRAINED / "balance_eval.json").read_text())
    assert report["episodes"] == 100 and report["seed"] == 1000 and len(report["successes"]) == 100
    assert (TRAINED / "balance_learning_curve.png").stat().st_size > 1000
    assert (TRAINED / "README.md").read_text().count(f"{report['success_rate']:.2f}") >= 1
