"""bench/push_limits.py's geometry and robotd stance's postures (policies/stance.py): the mechanics, not the figures."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration import load_calibration
from policies import stance as posture
from robotd.daemon.policy_select import MAX_CLAMPED_FRACTION
from sim.env import BipedBalanceEnv, balance_task_config
from sim.observation import ObservationSpec

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str):
    sys.path.insert(0, str(BENCH))  # bench scripts import each other
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


limits = _bench("push_limits")
SQUARE = np.array([[-0.05, -0.05], [0.05, -0.05], [0.05, 0.05], [-0.05, 0.05]])  # counter-clockwise


def test_margins_along_directions_to_a_square_edge():
    directions = np.array([[1.0, 0.0], [0.0, -1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    np.testing.assert_allclose(limits.margins_m(SQUARE, np.array([0.02, 0.0]), directions),
                               [0.03, 0.05, 0.03 / math.sqrt(0.5)])
    assert np.all(limits.margins_m(SQUARE, np.array([0.2, 0.0]), directions) == -np.inf)  # outside


def test_a_push_is_captured_while_its_capture_point_stays_over_the_soles():
    stance = limits.Stance(mass_kg=2.0, com_height_m=9.81 / 25.0, com_xy_m=(0.0, 0.0), polygon_xy_m=SQUARE.tolist(),
                           yaw_rad=0.0, upper_inertia_kg_m2=(0.0, 0.0, 0.0, 0.0), reaction_delay_s=0.0,
                           slew_rad_s=4.0)
    assert stance.omega_rad_s == pytest.approx(5.0)
    # v = F * 0.1 / 2 kg, offset v / 5: 0.05 m at F = 5 N, the square's half width
    forward = np.array([[1.0, 0.0]])
    assert limits.captured(stance, 4.9, 0.1, forward, np.zeros(2))[0]
    assert not limits.captured(stance, 5.1, 0.1, forward, np.zeros(2))[0]
    assert not limits.captured(stance, 5.1, 0.1, forward, np.zeros(2), hip=True)[0]  # no upper body, no swing


def test_the_stance_keeps_the_policy_its_action_range():
    cal = load_calibration()
    spec = ObservationSpec()
    wide = {"crouch": 1.0, "ankle_pitch": 0.0, "hip_pitch": 0.0, "spread": 1.0, "ankle_roll": -0.2}
    table = posture.stance_table(spec, wide, action_scale_rad=0.12)
    for joint, offset in table.items():
        i = cal.index(joint)
        centre = cal.nominal_rad[i] + offset
        reach = min(centre + 0.12, cal.max_rad[i]) - max(centre - 0.12, cal.min_rad[i])
        assert reach >= (1.0 - MAX_CLAMPED_FRACTION) * 0.24, joint
    assert table["r_hip_roll"] < 0 < table["l_hip_roll"]  # the spread is outward on both legs


def test_spread_lands_the_feet_wider():
    def feet_apart_m(stance_rad: dict[str, float]) -> float:
        joints = ObservationSpec().controlled_joints
        spec = ObservationSpec(stance_rad=tuple(stance_rad.get(j, 0.0) for j in joints))
        env = BipedBalanceEnv(balance_task_config(obs_spec=spec))
        env.reset(seed=3)
        for _ in range(150):  # lowered onto its feet by t = 3 s
            env.step(np.zeros(spec.n_actions))
        feet = env.data.geom_xpos[env.biped.foot_geom_ids]
        return float(np.linalg.norm(feet[0, :2] - feet[1, :2]))

    params = {"crouch": 0.0, "ankle_pitch": 0.0, "hip_pitch": 0.0, "spread": 0.6, "ankle_roll": 0.0}
    assert feet_apart_m(posture.stance_table(ObservationSpec(), params)) > feet_apart_m({}) + 0.03
