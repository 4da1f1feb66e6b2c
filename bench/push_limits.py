"""How hard a push can any policy survive that keeps the feet where they are? The robot's
capture point, measured in the simulator and checked against what the simulator does.

A 0.1 s push of F newtons on the torso gives the robot's centre of mass (CoM) a velocity of
about ``v = F * 0.1 s / M``. In the linear inverted pendulum view of standing (CoM at height
``h``, ``omega = sqrt(g / h)``) the robot can come to rest over its feet only if its
*instantaneous capture point* ``x + v / omega`` stays inside the support polygon: the centre of
pressure cannot leave the soles, so an ankle strategy (or a rigid body holding still, which
pivots about the sole's edge) captures exactly those pushes. What can move the capture point
further without a step is angular momentum: swinging the upper body about the hips (the hip
or flywheel strategy) shifts it by ``J / (M h omega)`` for an angular impulse ``J``, but only
after the reaction delay, over which the capture point's excess beyond the edge grows by
``exp(omega * t)``.

For each of the balance task's test episodes (the seeds every policy is scored on) this

1. runs ``hold`` (or, with ``--stance``, holds a trained policy's stance) to just before the
   first push and measures the robot as it stands: mass, CoM height, where the CoM projects,
   the soles' support polygon (MuJoCo's own state), the servo dead time and phone latency the
   episode drew, and the upper body's inertia about the hips;
2. runs the episode on in that pose and records the outcome, overall and after each push;
3. predicts, from step 1 alone, which pushes it survives (capture point inside the polygon)
   and compares with step 2 (the check that the model describes this robot);
4. gives upper bounds on the expected success of every policy that keeps these feet where they
   are (pushes uniform in magnitude and direction, as the task draws them): the CoM placed at
   the best point over the soles for each episode's stance (a policy knows its stance, not the
   push to come), plus a hip swing generous beyond what the robot can do (the upper body spun
   up at the slew limit instantly, never braked), without and with the episode's reaction delay
   (dead time + phone latency + one control tick).

It prints those bounds on the task's success and, for one fixed push magnitude in every push
(0..15 N), the push-tolerance curve they allow, beside the model's curve for the stance as it
stands (bench/robustness.py measures the real one); ``--json`` writes everything, ``--png``
draws the curves. docs/learning.md has the numbers.

    python bench/push_limits.py [--episodes 100] [--stance bench/balance_runs/b6.toml] [--json out.json] [--png out.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull

from policies.evaluation import EVAL_SEED
from sim.env import BipedBalanceEnv, balance_task_config
from sim.model import GRAVITY_M_S2
from sim.observation import ObservationSpec, stance_offsets

PUSH_TOLERANCE_N = (0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0)
N_DIRECTIONS = 72  # directions per magnitude for the tolerance curve's bounds
SETTLE_S = 1.9  # a push was survived when, this long after it began, the robot is upright and self-supported
LEG_BODY_PREFIXES = ("r_hip", "r_thigh", "r_shank", "r_ankle", "r_foot", "l_hip", "l_thigh", "l_shank",
                     "l_ankle", "l_foot")


@dataclass
class Stance:
    """The robot standing, just before the first push, in world coordinates (m, kg, s)."""

    mass_kg: float
    com_height_m: float
    com_xy_m: tuple[float, float]
    polygon_xy_m: list[tuple[float, float]]  # the soles' convex hull, counter-clockwise
    yaw_rad: float  # the torso's heading: the robot's frame for a CoM placement
    upper_inertia_kg_m2: tuple[float, float, float, float]  # upper body about the hips: Ixx, Iyy, Ixy, (0)
    reaction_delay_s: float  # servo dead time + phone latency + one control tick
    slew_rad_s: float

    @property
    def omega_rad_s(self) -> float:
        return math.sqrt(GRAVITY_M_S2 / self.com_height_m)

    def capture_offset_m(self, force_n: np.ndarray | float, duration_s: float) -> np.ndarray | float:
        """How far a push moves the capture point: v / omega, v = F * duration / M."""
        return np.asarray(force_n) * duration_s / self.mass_kg / self.omega_rad_s


@dataclass
class PushOutcome:
    force_n: float
    direction_rad: float  # world frame
    capture_offset_m: float  # v / omega right after the push
    margin_m: float  # from the CoM's projection to the polygon's edge, along the push
    survived: bool | None  # in the simulator (None: an earlier push already failed)


def _polygon(env: BipedBalanceEnv) -> np.ndarray:
    """Bottom corners of the soles that touch the floor (z < 3 mm), their convex hull (counter-clockwise)."""
    corners = env.biped.foot_corners(env.data)
    pts = corners[corners[:, 2] < 3e-3, :2]
    return pts[ConvexHull(pts).vertices]


def _upper_inertia(env: BipedBalanceEnv) -> tuple[float, float, float, float]:
    """Inertia of everything above the hips about the point between the hip joints (world axes)."""
    m, d = env.model, env.data
    hip_ids = [m.joint(n).id for n in ("r_hip_pitch", "l_hip_pitch")]
    pivot = d.xanchor[hip_ids].mean(axis=0)
    inertia = np.zeros((3, 3))
    for i in range(1, m.nbody):
        if m.body(i).name.startswith(LEG_BODY_PREFIXES):
            continue
        rot = d.ximat[i].reshape(3, 3)
        r = d.xipos[i] - pivot
        inertia += rot @ np.diag(m.body_inertia[i]) @ rot.T + m.body_mass[i] * (r @ r * np.eye(3) - np.outer(r, r))
    return float(inertia[0, 0]), float(inertia[1, 1]), float(inertia[0, 1]), 0.0


def _stance(env: BipedBalanceEnv) -> Stance:
    m, d, b = env.model, env.data, env.biped
    com = d.subtree_com[b.torso_id]
    rot = d.xmat[b.torso_id].reshape(3, 3)
    return Stance(
        mass_kg=float(m.body_subtreemass[b.torso_id]),
        com_height_m=float(com[2]),
        com_xy_m=(float(com[0]), float(com[1])),
        polygon_xy_m=[tuple(map(float, p)) for p in _polygon(env)],
        yaw_rad=math.atan2(rot[1, 0], rot[0, 0]),
        upper_inertia_kg_m2=_upper_inertia(env),
        reaction_delay_s=float(m.actuator_delay[0]) + env.phone.latency_s + 1.0 / env.config.control_hz,
        slew_rad_s=env.calibration.safety.max_slew_rad_s,
    )


def margins_m(polygon: np.ndarray, point: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance from ``point`` along each unit direction (rows) to the polygon's boundary; -inf
    for a point outside the polygon."""
    a = polygon
    edge = np.roll(polygon, -1, axis=0) - a
    normal = np.stack([edge[:, 1], -edge[:, 0]], axis=1) / np.hypot(edge[:, 0], edge[:, 1])[:, None]  # outward (CCW)
    dist = np.einsum("ij,ij->i", normal, a - point)  # > 0: inside that edge
    if (dist < 0).any():
        return np.full(len(directions), -np.inf)
    speed = directions @ normal.T  # [directions, edges]
    with np.errstate(divide="ignore"):
        reach = np.where(speed > 1e-12, dist[None, :] / speed, np.inf)
    return reach.min(axis=1)


def hip_shift_m(stance: Stance, directions: np.ndarray) -> np.ndarray:
    """The most a hip swing can move the capture point along each direction: the upper body spun
    up to the slew limit about the horizontal axis across the push, at once (J = I * slew), never
    braked."""
    ixx, iyy, ixy, _ = stance.upper_inertia_kg_m2
    axes = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    inertia = np.einsum("ij,jk,ik->i", axes, np.array([[ixx, ixy], [ixy, iyy]]), axes)
    return inertia * stance.slew_rad_s / (stance.mass_kg * stance.com_height_m * stance.omega_rad_s)


def captured(stance: Stance, force_n: np.ndarray | float, duration_s: float, directions: np.ndarray,
             com_xy: np.ndarray, hip: bool = False, delayed: bool = False) -> np.ndarray:
    """Per push (rows of ``directions``, magnitudes ``force_n``): does the capture point after it stay
    inside the polygon (with the hip swing's help)?"""
    excess = stance.capture_offset_m(force_n, duration_s) - margins_m(np.array(stance.polygon_xy_m), com_xy, directions)
    if not hip:
        return excess <= 0
    if delayed:
        excess = excess * math.exp(stance.omega_rad_s * max(0.0, stance.reaction_delay_s - duration_s))
    return (excess <= 0) | (excess <= hip_shift_m(stance, directions))


def _robot_to_world(stance: Stance, offset_xy: np.ndarray) -> np.ndarray:
    c, s = math.cos(stance.yaw_rad), math.sin(stance.yaw_rad)
    centroid = np.array(stance.polygon_xy_m).mean(axis=0)
    return centroid + np.array([c * offset_xy[0] - s * offset_xy[1], s * offset_xy[0] + c * offset_xy[1]])


def run_episode(env: BipedBalanceEnv, seed: int, action: np.ndarray) -> tuple[Stance, list[PushOutcome], bool]:
    """One constant action (``hold``: zeros) on one episode: the stance before the first push,
    each push and its outcome, success."""
    env.reset(seed=seed)
    pushes = [(start, push) for start, _, push in env._pushes]
    first = pushes[0][0]
    settle_steps = round(SETTLE_S * env.config.control_hz)
    rule, weight_n = env.config.success, env.biped.weight_n
    stance, checks, steps = None, {}, 0
    while True:
        if steps == first - 1:
            stance = _stance(env)
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        for k, (start, _) in enumerate(pushes):
            if steps == start + settle_steps:
                tilt_deg = math.degrees(math.acos(min(1.0, max(-1.0, info["torso_up_z"]))))
                checks[k] = tilt_deg < rule.max_tilt_deg and info["string_tension_n"] < rule.max_string_load * weight_n
        if terminated or truncated:
            break
    assert stance is not None
    com = np.array(stance.com_xy_m)
    outcomes, failed = [], False
    for k, (_, push) in enumerate(pushes):
        f = np.array(push.force_xy_n)
        mag = float(np.hypot(*f))
        u = f / mag if mag > 0 else np.array([1.0, 0.0])
        survived = None if failed else checks.get(k, False)
        failed = failed or survived is False
        outcomes.append(PushOutcome(mag, math.atan2(u[1], u[0]),
                                    float(stance.capture_offset_m(mag, push.duration_s)),
                                    float(margins_m(np.array(stance.polygon_xy_m), com, u[None])[0]), survived))
    return stance, outcomes, bool(info["task"]["success"])


def _unit(angles_rad: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles_rad), np.sin(angles_rad)], axis=1)


def episode_bound(stance: Stance, outcomes: list[PushOutcome], duration_s: float, com_xy: np.ndarray,
                  **how: bool) -> bool:
    """Are all of the episode's pushes captured?"""
    return bool(captured(stance, np.array([o.force_n for o in outcomes]), duration_s,
                         _unit(np.array([o.direction_rad for o in outcomes])), com_xy, **how).all())


#: Where a policy may put the CoM, from the soles' centroid in the robot's frame (m): a 1 cm grid.
PLACEMENTS_M = [np.array([x, y]) for x in np.linspace(-0.06, 0.06, 13) for y in np.linspace(-0.10, 0.10, 21)]
TASK_FORCES_N = np.linspace(0.0, 8.0, 17)  # the task's U(0, 8) N, for its expected success


def captured_fraction(stance: Stance, forces_n: np.ndarray, duration_s: float, com_xy: np.ndarray,
                      **how: bool) -> float:
    """The fraction of pushes captured from ``com_xy``: every force in ``forces_n``, each from
    N_DIRECTIONS directions (a uniform magnitude and direction)."""
    directions = _unit(np.linspace(0, 2 * math.pi, N_DIRECTIONS, endpoint=False))
    return float(np.mean([captured(stance, f, duration_s, directions, com_xy, **how).mean() for f in forces_n]))


def allowed_success(stances: list[Stance], forces_n: np.ndarray, duration_s: float, pushes_per_episode: int,
                    best_placement: bool = False, **how: bool) -> float:
    """Expected success with independent pushes (magnitude uniform over ``forces_n``, direction
    uniform): per stance q**pushes, q the fraction captured from where the CoM is or, with
    ``best_placement``, from the best point of :data:`PLACEMENTS_M` for that stance (chosen
    knowing the stance, not the pushes: what a policy could do before a push it cannot foresee)."""
    allowed = []
    for s in stances:
        candidates = [np.array(s.com_xy_m)] + ([_robot_to_world(s, off) for off in PLACEMENTS_M] if best_placement else [])
        allowed.append(max(captured_fraction(s, forces_n, duration_s, c, **how) for c in candidates)
                       ** pushes_per_episode)
    return float(np.mean(allowed))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--stance", type=Path, help="a TOML with a [stance_rad] table (bench/balance_runs/b6.toml): hold "
                   "that stance instead of the nominal pose; the check and the bounds are then for it")
    args = p.parse_args()

    spec = ObservationSpec()
    if args.stance:
        table = tomllib.loads(args.stance.read_text())["stance_rad"]
        spec = ObservationSpec(stance_rad=stance_offsets(spec.controlled_joints, table))
    config = balance_task_config(obs_spec=spec)
    duration_s = config.pushes.duration_s
    n_pushes = len(config.pushes.times_s)
    env = BipedBalanceEnv(config)
    action = np.zeros(env.action_space.shape)  # hold: the nominal pose, or the stance
    stood = f"the stance of {args.stance}" if args.stance else "hold"
    episodes, results = [], []
    for i in range(args.episodes):
        stance, outcomes, success = run_episode(env, args.seed + i, action)
        episodes.append((stance, outcomes))
        results.append(success)
    stances = [s for s, _ in episodes]

    # 1. Does the capture point describe this robot? Per push, prediction vs the simulator.
    pairs = [(o.capture_offset_m <= o.margin_m, o.survived) for _, outs in episodes for o in outs
             if o.survived is not None]
    agree = sum(pred == obs for pred, obs in pairs)
    confusion = {f"predicted {'kept' if pr else 'lost'}, {'kept' if ob else 'lost'} in the simulator":
                 sum(1 for a, b in pairs if a == pr and b == ob) for pr in (True, False) for ob in (True, False)}
    predicted_hold = [episode_bound(s, o, duration_s, np.array(s.com_xy_m)) for s, o in episodes]
    print(f"robot: mass {np.median([s.mass_kg for s in stances]):.2f} kg, CoM height "
          f"{np.median([s.com_height_m for s in stances]) * 100:.1f} cm (median), omega "
          f"{np.median([s.omega_rad_s for s in stances]):.2f} rad/s; support polygon "
          f"{np.median([np.ptp(np.array(s.polygon_xy_m), axis=0).max() for s in stances]) * 100:.1f} cm across")
    margins = [o.margin_m for _, outs in episodes for o in outs]
    offsets = [o.capture_offset_m for _, outs in episodes for o in outs]
    print(f"pushes: capture offset v/omega median {np.median(offsets) * 100:.1f} cm (max {max(offsets) * 100:.1f}); "
          f"margin to the sole's edge along the push median {np.median(margins) * 100:.1f} cm "
          f"(min {min(margins) * 100:.1f})")
    print(f"check: per push, the capture point predicts {stood}'s outcome on {agree}/{len(pairs)} pushes {confusion}")
    print(f"check: predicted {stood} success {np.mean(predicted_hold):.2f}, measured {np.mean(results):.2f} "
          f"(episodes agreeing: {sum(a == b for a, b in zip(predicted_hold, results))}/{len(results)})")

    # 2. Upper bounds for any policy that keeps its feet in place.
    def curve(**kw: bool) -> list[float]:
        return [allowed_success(stances, np.array([f]), duration_s, n_pushes, **kw) for f in PUSH_TOLERANCE_N]

    as_stands = allowed_success(stances, TASK_FORCES_N, duration_s, n_pushes)
    hold_curve = curve()
    print(f"{stood} as it stands (model, expected over the task's push distribution): task success {as_stands:.2f}; "
          "push tolerance " + " ".join(f"{f:g} N {c:.2f}" for f, c in zip(PUSH_TOLERANCE_N, hold_curve)))
    bounds = {}
    for name, how in (("CoM placed anywhere", {}),
                      ("+ hip swing, delayed", {"hip": True, "delayed": True}),
                      ("+ hip swing, no delay", {"hip": True})):
        task = allowed_success(stances, TASK_FORCES_N, duration_s, n_pushes, best_placement=True, **how)
        tolerance = curve(best_placement=True, **how)
        bounds[name] = {"task_success": task, "push_tolerance": dict(zip(map(str, PUSH_TOLERANCE_N), tolerance))}
        print(f"bound ({name}): task success <= {task:.2f}; push tolerance "
              + " ".join(f"{f:g} N {c:.2f}" for f, c in zip(PUSH_TOLERANCE_N, tolerance)))
    hip = [float(hip_shift_m(s, _unit(np.array([s.yaw_rad]))[0:1])[0]) for s in stances]
    delays = [s.reaction_delay_s for s in stances]
    print(f"hip swing: at most {np.median(hip) * 100:.2f} cm of capture point (median, sagittal push), reaction delay "
          f"{np.median(delays) * 1e3:.0f} ms median ({min(delays) * 1e3:.0f}-{max(delays) * 1e3:.0f})")

    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(PUSH_TOLERANCE_N, hold_curve, "o--", label=f"{stood}, capture-point model")
        for name, b in bounds.items():
            ax.plot(PUSH_TOLERANCE_N, list(b["push_tolerance"].values()), "o-", label=f"bound: {name}")
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("push magnitude, every push (N, 0.1 s)")
        ax.set_ylabel("success allowed")
        ax.set_title("What a policy that does not step can survive")
        ax.legend(fontsize=8)
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "episodes": args.episodes, "seed": args.seed, "stance": stood, "hold_success_measured": float(np.mean(results)),
            "hold_success_predicted": float(np.mean(predicted_hold)), "expected_success_model": as_stands,
            "per_push_agreement": [agree, len(pairs)],
            "confusion": confusion, "bounds": bounds,
            "hold_push_tolerance_model": dict(zip(map(str, PUSH_TOLERANCE_N), hold_curve)),
            "stances": [asdict(s) for s in stances],
            "pushes": [[asdict(o) for o in outs] for _, outs in episodes]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
