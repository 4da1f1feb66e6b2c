"""The MuJoCo model against the calibration and the MG996R datasheet (real physics, no mocks)."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from calibration import JOINT_NAMES, load_calibration
from sim.model import Biped, DomainRandomization, SimRobot, init_ctrl_history
from sim.observation import ObservationSpec
from sim.rotations import torso_from_phone


@pytest.fixture(scope="module")
def calibration():
    return load_calibration()


@pytest.fixture(scope="module")
def biped(calibration):
    return Biped(calibration)


def test_joints_match_calibration(biped, calibration):
    m = biped.model
    hinge_names = [m.joint(i).name for i in range(m.njnt) if m.jnt_type[i] == mujoco.mjtJoint.mjJNT_HINGE]
    assert hinge_names and set(hinge_names) == set(JOINT_NAMES)
    assert [m.actuator(i).name for i in range(m.nu)] == list(JOINT_NAMES)
    np.testing.assert_allclose(m.jnt_range[biped.joint_ids, 0], calibration.min_rad)
    np.testing.assert_allclose(m.jnt_range[biped.joint_ids, 1], calibration.max_rad)
    np.testing.assert_allclose(m.actuator_ctrlrange, np.stack([calibration.min_rad, calibration.max_rad], 1))
    np.testing.assert_allclose(m.jnt_axis[biped.joint_ids], [j.axis for j in calibration.joints])
    np.testing.assert_allclose(biped.stand_qpos[biped.qpos_adr], calibration.nominal_rad)


def test_size_and_mass_like_the_kit(biped, calibration):
    assert biped.mass_kg == pytest.approx(calibration.mass_kg, abs=0.1)
    assert biped.stand_height_m == pytest.approx(calibration.stand_height_m, abs=0.02)
    assert biped.model.opt.timestep == 0.002
    assert biped.model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST


def test_imu_site_frame_is_the_calibrated_phone_frame(biped, calibration):
    d = mujoco.MjData(biped.model)
    d.qpos[:] = biped.stand_qpos
    mujoco.mj_forward(biped.model, d)
    torso = d.xmat[biped.torso_id].reshape(3, 3)
    site = d.site_xmat[biped.imu_site_id].reshape(3, 3)
    np.testing.assert_allclose(torso.T @ site, calibration.phone_to_torso, atol=1e-9)


def test_sixty_degree_step_takes_the_datasheet_time(calibration):
    """MG996R: 0.17 s/60 deg at 4.8 V no-load; 95% of a 60 deg step in ~0.17-0.22 s."""
    biped = Biped(calibration, fixed_base=True)
    m, d = biped.model, mujoco.MjData(biped.model)
    biped.set_actuator_delay(0.0)
    i = calibration.index("neck_yaw")
    start, step = -0.5, math.radians(60)
    d.qpos[biped.qpos_adr] = 0.0
    d.qpos[biped.qpos_adr[i]] = start
    d.ctrl[:] = d.qpos[biped.qpos_adr]
    init_ctrl_history(m, d)
    d.ctrl[i] = start + step
    t95, peak = None, 0.0
    while d.time < 0.5:
        mujoco.mj_step(m, d)
        peak = max(peak, abs(d.qvel[biped.dof_adr[i]]))
        if t95 is None and d.qpos[biped.qpos_adr[i]] - start >= 0.95 * step:
            t95 = d.time
    assert t95 is not None and 0.17 <= t95 <= 0.22
    assert 5.5 <= peak <= 7.5  # datasheet no-load speed ~6.2-7.5 rad/s
    assert d.qpos[biped.qpos_adr[i]] == pytest.approx(start + step, abs=math.radians(2))


def test_actuator_delay_is_dead_time(calibration):
    biped = Biped(calibration, fixed_base=True)
    m, d = biped.model, mujoco.MjData(biped.model)
    biped.set_actuator_delay(0.1)
    init_ctrl_history(m, d)
    i = calibration.index("neck_yaw")
    d.ctrl[i] = 0.5
    mujoco.mj_step(m, d, 45)  # 90 ms: nothing yet
    assert abs(d.qpos[biped.qpos_adr[i]]) < 1e-3
    mujoco.mj_step(m, d, 25)  # 140 ms: moving
    assert d.qpos[biped.qpos_adr[i]] > 0.05


def test_string_tension_when_hanging_and_when_lengthened(calibration):
    robot = SimRobot(calibration, seed=0)
    robot.step(1.0)
    hanging = robot.string_tension()
    assert 0.2 * robot.biped.weight_n < hanging < 1.5 * robot.biped.weight_n
    robot.biped.set_string_length(robot.biped.string_length_m + 0.005)
    robot.step(1.0)
    assert 0.0 <= robot.string_tension() < hanging
    robot.biped.set_string_length(robot.biped.free_string_length_m)
    robot.step(1.0)
    assert robot.string_tension() == 0.0


def test_string_tension_is_the_tendon_limit_force(calibration):
    robot = SimRobot(calibration, seed=0)
    robot.step(0.5)
    d = robot.data
    rows = [r for r in range(d.nefc)
            if d.efc_type[r] == mujoco.mjtConstraint.mjCNSTR_LIMIT_TENDON and d.efc_id[r] == robot.biped.string_id]
    assert len(rows) == 1
    assert robot.string_tension() == pytest.approx(abs(d.efc_force[rows[0]]), rel=1e-9)


def test_sim_robot_phone_reading_gives_upright_torso(calibration):
    robot = SimRobot(calibration, seed=1)
    robot.set_targets(calibration.nominal_rad)
    robot.step(0.5)
    quat, gyro, accel = robot.phone_reading()
    torso_quat, _ = torso_from_phone(quat, gyro, calibration.phone_to_torso)
    up_z = 1 - 2 * (torso_quat[1] ** 2 + torso_quat[2] ** 2)
    assert up_z > math.cos(math.radians(5))  # within the 3 deg mount error + sway
    assert np.linalg.norm(accel) == pytest.approx(9.81, rel=0.05)
    assert accel[1] > 9.0  # phone y points up the screen, upright
    assert robot.torso_up_z() > 0.99


def test_backlash_adds_passive_play(calibration):
    biped = Biped(calibration, backlash_rad=math.radians(0.75))
    m = biped.model
    play = m.joint("r_knee_backlash")
    assert play.range == pytest.approx([-math.radians(0.75), math.radians(0.75)])
    assert m.nu == len(JOINT_NAMES)


def test_randomization_draws_from_nominal_not_compounding(calibration):
    biped = Biped(calibration)
    nominal_mass = biped.model.body_mass.copy()
    rng = np.random.default_rng(0)
    for _ in range(20):
        biped.randomize(rng, DomainRandomization())
    assert np.all(np.abs(biped.model.body_mass[1:] / nominal_mass[1:] - 1) <= 0.1 + 1e-9)
    assert 0.08 <= biped.model.actuator_delay[0] <= 0.25
    biped.randomize(rng, DomainRandomization.none(actuator_delay_ms=100))
    np.testing.assert_allclose(biped.model.body_mass, nominal_mass)
    assert biped.model.actuator_delay[0] == pytest.approx(0.1)


def _leg_side(m: mujoco.MjModel, geom: int) -> str | None:
    """'r' or 'l' for a geom on a leg (a body under that side's hip), else None."""
    body = int(m.geom_bodyid[geom])
    while body:
        name = m.body(body).name
        if name in ("r_hip", "l_hip"):
            return name[0]
        body = int(m.body_parentid[body])
    return None


def test_the_legs_collide_with_each_other_and_the_floor_only(biped):
    m = biped.model
    robot = [g for g in range(m.ngeom) if g != biped.floor_geom_id]
    sides = {g: _leg_side(m, g) for g in robot}
    assert sorted(s for s in sides.values() if s) == ["l"] * 5 + ["r"] * 5  # hip, thigh, shank, ankle, foot
    for i, a in enumerate(robot):
        assert m.geom_contype[a] & m.geom_conaffinity[biped.floor_geom_id]  # every robot geom stands on the floor
        for b in robot[i + 1:]:
            collide = bool(m.geom_contype[a] & m.geom_conaffinity[b] or m.geom_contype[b] & m.geom_conaffinity[a])
            # Between the two legs only: never within one leg, never the torso, arms or head.
            assert collide == ({sides[a], sides[b]} == {"r", "l"}), (m.geom(a).name or a, m.geom(b).name or b)


@pytest.mark.parametrize("legs_collide", [True, False])
def test_a_foot_cannot_pass_through_the_other_leg(calibration, legs_collide):
    """Both hip rolls driven inward to their limits: the legs meet instead of crossing (and do
    cross with the legs' collisions turned off, so the test would see it)."""
    biped = Biped(calibration, fixed_base=True)
    m, d = biped.model, mujoco.MjData(biped.model)
    if not legs_collide:
        m.geom_conaffinity[[g for g in range(m.ngeom) if _leg_side(m, g)]] = 0
    biped.set_actuator_delay(0.0)
    init_ctrl_history(m, d)
    r, l = calibration.index("r_hip_roll"), calibration.index("l_hip_roll")
    d.ctrl[r], d.ctrl[l] = calibration.max_rad[r], calibration.min_rad[l]  # each foot towards the other (+y, -y)
    deepest_m = 0.0
    while d.time < 1.0:
        mujoco.mj_step(m, d)
        deepest_m = min([deepest_m, *(c.dist for c in d.contact[:d.ncon])])
    gap_m = d.geom_xpos[m.geom("l_foot").id, 1] - d.geom_xpos[m.geom("r_foot").id, 1]
    if legs_collide:
        assert gap_m > 0.04 and deepest_m > -0.01  # the soft contact gives a few mm under full servo torque
    else:
        assert gap_m < -0.1  # the right foot ended on the left's side
