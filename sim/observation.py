"""The observation/action contract shared by the simulator, the learner and the daemon.

A policy sees only what the real robot has: the phone's orientation (as the gravity
direction in the torso frame) and its gyro, plus the last few commanded actions (MG996R
servos report no position, so the commands are the only proprioception there is). The
same :meth:`ObservationSpec.build` turns a simulated phone reading and a real fused
phone packet into the vector a policy sees, so a policy trained in the simulator runs
unchanged on the robot.

Layout of one observation (float32), in this order:

====================  ======  =====================================================
slice                 size    meaning
====================  ======  =====================================================
``gravity``           3       unit gravity direction in the torso frame (x fwd, y left, z up);
                              upright = (0, 0, -1)
``gyro``              3       torso angular velocity (rad/s) times ``gyro_scale``
``actions``           K * n   the last K actions (newest first), each in [-1, 1]
====================  ======  =====================================================

An action is n numbers in [-1, 1]: joint target offsets around the policy's stance,
``target_rad = nominal_rad + stance_rad + action_scale_rad * action`` for the controlled
joints (``stance_rad`` is part of the contract, zero unless the policy was trained with one:
a wider, lower stance is tuned once, the policy learns to react around it); the other joints
hold their nominal angles. The discretised variant (for Q-learning) picks
one of ``n_bins`` evenly spaced levels in [-1, 1] per joint.

Importing this module must stay cheap (numpy only): the daemon's hot path uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calibration import JOINT_NAMES, LEG_JOINTS
from sim.servo_command import holds_frame

#: A controlled joint whose calibrated limits cut off more than this fraction of the range the
#: policy's actions can ask for (nominal + stance +- action_scale_rad) is a mismatch worth
#: reporting (robotd.daemon.policy_select) and a stance the stance search may not choose.
MAX_CLAMPED_FRACTION = 0.1

OBSERVATION_CONTRACT_VERSION = 2
#: Contracts this code reads: version 1 is version 2 without ``stance_rad`` (zero stance).
READABLE_CONTRACT_VERSIONS = (1, 2)


def stance_offsets(joints: tuple[str, ...], stance_rad: dict[str, float] | None) -> tuple[float, ...]:
    """The contract's ``stance_rad`` (one offset per controlled joint) from a table of joint -> offset (rad)
    (``QLearningConfig.stance_rad``, the TOML of bench/balance_runs/b6.toml); joints not named get 0."""
    if not stance_rad:
        return ()
    unknown = sorted(set(stance_rad) - set(joints))
    if unknown:
        raise ValueError(f"stance_rad: {', '.join(unknown)} not among the controlled joints ({', '.join(joints)})")
    return tuple(float(stance_rad.get(j, 0.0)) for j in joints)


@dataclass(frozen=True)
class ObservationSpec:
    """Everything that fixes the observation and action layout of a policy."""

    controlled_joints: tuple[str, ...] = LEG_JOINTS
    action_history: int = 4
    action_scale_rad: float = 0.4
    gyro_scale: float = 0.25
    n_bins: int = 5
    # The policy decides on every decision_ticks-th tick after it takes control and its action is
    # held in between (the servo's own time scale: 80-250 ms of dead time at 50 Hz is 4-12 ticks).
    # DecisionHold keeps the rule, for the daemon's CheckpointPolicy and the learner's actors.
    decision_ticks: int = 1
    # Per controlled joint: the offset (rad) from the nominal pose that action zero commands
    # (empty: none). The middle bin then holds this stance instead of the nominal pose.
    stance_rad: tuple[float, ...] = ()
    version: int = OBSERVATION_CONTRACT_VERSION
    joint_index: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [j for j in self.controlled_joints if j not in JOINT_NAMES]
        if unknown:
            raise ValueError(f"unknown controlled joints: {unknown}")
        if self.action_history < 0 or self.n_bins < 2 or self.decision_ticks < 1:
            raise ValueError("action_history must be >= 0, n_bins >= 2 and decision_ticks >= 1")
        object.__setattr__(self, "controlled_joints", tuple(self.controlled_joints))
        object.__setattr__(self, "stance_rad", tuple(float(x) for x in self.stance_rad))
        if self.stance_rad and len(self.stance_rad) != len(self.controlled_joints):
            raise ValueError(f"stance_rad: {len(self.stance_rad)} offsets for {len(self.controlled_joints)} "
                             f"controlled joints")
        if not all(math.isfinite(x) for x in self.stance_rad):
            raise ValueError(f"stance_rad: every offset must be finite, got {self.stance_rad}")
        object.__setattr__(
            self, "joint_index", np.array([JOINT_NAMES.index(j) for j in self.controlled_joints], dtype=np.int64)
        )
        # Not fields: per-call constants of build_from_floats (a blank observation copies faster
        # than np.empty allocates, and gyro_scale as the float64 that build multiplies with).
        object.__setattr__(self, "_blank", np.zeros(6 + self.action_history * len(self.controlled_joints),
                                                    dtype=np.float32))
        object.__setattr__(self, "_gyro_scale_f64", float(self.gyro_scale))
        object.__setattr__(self, "_stance", np.array(self.stance_rad or [0.0] * len(self.controlled_joints)))

    @property
    def n_actions(self) -> int:
        return len(self.controlled_joints)

    @property
    def size(self) -> int:
        return 6 + self.action_history * self.n_actions

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("joint_index")
        d["controlled_joints"] = list(self.controlled_joints)
        d["stance_rad"] = list(self.stance_rad)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ObservationSpec":
        d = dict(d)
        version = d.pop("version", None)
        if version not in READABLE_CONTRACT_VERSIONS:
            raise ValueError(f"observation contract version {version!r} is not one this code reads "
                             f"({', '.join(map(str, READABLE_CONTRACT_VERSIONS))})")
        d["controlled_joints"] = tuple(d["controlled_joints"])
        d["stance_rad"] = tuple(d.get("stance_rad", ()))
        return cls(**d)

    def differences(self, other: dict) -> list[tuple[str, Any, Any]]:
        """``(key, other's value, this spec's value)`` for each contract field that differs.

        ``other`` is a :meth:`to_dict` record (a checkpoint's, a log header's); one of an older
        contract version this code reads is compared as what it reads as.
        """
        ours = self.to_dict()
        try:
            theirs = ObservationSpec.from_dict(other).to_dict()
        except (TypeError, ValueError, KeyError):
            theirs = dict(other)
        return [(key, theirs.get(key), ours.get(key)) for key in sorted(set(ours) | set(theirs))
                if ours.get(key) != theirs.get(key)]

    def build(self, quat_wxyz: np.ndarray, gyro_torso_rad_s: np.ndarray, actions: "ActionHistory",
              out: np.ndarray | None = None) -> np.ndarray:
        """The observation for a torso orientation (torso->world), torso gyro and action history.

        ``out`` (float32, ``size``) is filled and returned instead of a new array; the values are
        the same either way.
        """
        gyro = gyro_torso_rad_s
        if type(gyro) is np.ndarray and gyro.dtype is _FLOAT64:
            return self.build_from_floats(_floats4(quat_wxyz), gyro.tolist(), actions, out)
        obs = np.empty(self.size, dtype=np.float32) if out is None else out
        obs[0:3] = gravity_in_torso(quat_wxyz)
        np.multiply(gyro, self.gyro_scale, out=obs[3:6])
        obs[6:] = actions.flat()
        return obs

    def build_from_floats(self, quat_wxyz: tuple[float, float, float, float],
                          gyro_torso_rad_s: tuple[float, float, float], actions: "ActionHistory",
                          out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`build` for a reading given as Python floats, (w, x, y, z) and (gx, gy, gz).

        The simulator's per-step path: the same values as ``build`` of the same numbers in
        float64 arrays, without making those arrays.
        """
        w, x, y, z = quat_wxyz
        gx, gy, gz = gyro_torso_rad_s
        scale = self._gyro_scale_f64  # float64 array * scale computes in float64 too
        obs = self._blank.copy() if out is None else out
        # gravity_in_torso, then the scaled gyro: the same float64 values, rounded to float32 alike.
        obs[:6] = (-(2 * (x * z - w * y)), -(2 * (y * z + w * x)), -(1 - 2 * (x * x + y * y)),
                   gx * scale, gy * scale, gz * scale)
        obs[6:] = actions.flat()
        return obs

    def targets_rad(self, action: np.ndarray, nominal_rad: np.ndarray) -> np.ndarray:
        """All 17 joint targets for an action (values outside [-1, 1] are clipped).

        An action with a NaN or infinite component gives a frame of NaN targets: the frame is
        held (:func:`sim.servo_command.holds_frame`; the safety layer sends nothing).
        """
        a = np.array(action, dtype=np.float64)  # a copy: the caller's action stays as it is
        if holds_frame(a):
            return np.full(len(nominal_rad), np.nan)
        np.maximum(a, -1.0, out=a)
        np.minimum(a, 1.0, out=a)
        targets = np.array(nominal_rad, dtype=np.float64, copy=True)
        targets[self.joint_index] += self._stance + self.action_scale_rad * a
        return targets

    def pose_action(self, pose_rad: np.ndarray, nominal_rad: np.ndarray) -> np.ndarray:
        """The action that commands ``pose_rad`` (17 joint angles): the inverse of :meth:`targets_rad`.

        ``((pose_rad - nominal_rad)[joint_index] - stance_rad) / action_scale_rad``, clipped to [-1, 1]. It
        fills the action history when a policy takes control (:meth:`ActionHistory.fill`), so
        the history says what the servos were last told, as it does from then on.
        """
        offset = np.asarray(pose_rad, dtype=np.float64)[self.joint_index] - np.asarray(nominal_rad)[self.joint_index]
        return np.clip((offset - self._stance) / self.action_scale_rad, -1.0, 1.0)

    def bin_levels(self) -> np.ndarray:
        return np.linspace(-1.0, 1.0, self.n_bins)

    def discrete_to_action(self, bins: np.ndarray) -> np.ndarray:
        return self.bin_levels()[np.asarray(bins, dtype=np.int64)]


class DecisionHold:
    """The decision hold (``ObservationSpec.decision_ticks``), one rule for everyone who keeps it.

    The policy decides on the first tick after :meth:`reset` (taking control, an episode's
    start) and on every ``decision_ticks``-th tick after it; the ticks between repeat its last
    action. The daemon's ``CheckpointPolicy`` and the learner's actors both ask :attr:`due`, so
    the robot decides on exactly the ticks the learner decided on in training.
    """

    __slots__ = ("decision_ticks", "_tick")

    def __init__(self, decision_ticks: int):
        if decision_ticks < 1:
            raise ValueError(f"decision_ticks must be >= 1, not {decision_ticks}")
        self.decision_ticks = decision_ticks
        self._tick = 0

    def reset(self) -> None:
        """The next tick is the first after taking control: a decision."""
        self._tick = 0

    @property
    def due(self) -> bool:
        """Whether the next tick decides (False: it repeats the last decision's action)."""
        return self._tick % self.decision_ticks == 0

    def advance(self) -> None:
        """One tick has passed (a decision or a repeat)."""
        self._tick += 1


class ActionHistory:
    """The last K actions, newest first, as the observation carries them.

    Stored as a window sliding backwards through a longer buffer, so a push writes one row
    (the older rows are moved once every ``_SPARE`` pushes) and :meth:`flat` hands out a
    view made in advance.
    """

    _SPARE = 64  # pushes between two moves of the window back to the end of the buffer

    def __init__(self, spec: ObservationSpec):
        k, n = spec.action_history, spec.n_actions
        self._k = k
        self._rows = np.zeros((self._SPARE + k, n), dtype=np.float32)
        self._flats = [self._rows[p:p + k].reshape(-1) for p in range(self._SPARE + 1)]  # views
        self._p = self._SPARE  # the window is rows p .. p + k - 1, newest first

    def reset(self) -> None:
        self._rows[:] = 0.0
        self._p = self._SPARE

    def fill(self, action: np.ndarray) -> None:
        """Every one of the K entries set to ``action``, as if it had been pushed K times.

        The start of control, in the daemon and the simulator alike: the history holds the
        pose the servos are commanded to (:meth:`ObservationSpec.pose_action`), not zeros.
        """
        self._rows[:] = action
        self._p = self._SPARE

    def push(self, action: np.ndarray) -> None:
        if self._k:
            p = self._p - 1
            if p < 0:  # the window reached the front: move its newest k - 1 rows to the back
                self._rows[self._SPARE + 1:] = self._rows[:self._k - 1]
                p = self._SPARE
            self._rows[p] = action
            self._p = p

    def flat(self) -> np.ndarray:
        """The K actions, newest first, flattened (a view: read it before the next push)."""
        return self._flats[self._p]


def quat_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion [w, x, y, z]."""
    w, x, y, z = (float(v) for v in q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


_FLOAT64 = np.dtype(np.float64)


def _floats4(q) -> tuple[float, float, float, float]:
    """The four components of a quaternion as Python floats (``float(v)`` of each)."""
    if type(q) is np.ndarray and q.dtype is _FLOAT64:
        return q.tolist()  # the same floats, without a per-element conversion
    return tuple(float(v) for v in q)


def gravity_in_torso(q_wxyz: np.ndarray) -> np.ndarray:
    """Unit gravity direction in the torso frame for a torso->world orientation."""
    w, x, y, z = _floats4(q_wxyz)
    # Third row of R (world z expressed in the torso frame), negated: R^T @ (0, 0, -1).
    return -np.array([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])


#: "Upright" means one thing everywhere a figure is called that (the simulated robot's ground
#: truth, ``robotd replay``): the torso's up axis within this many degrees of vertical.
#: "Not fallen" (the safety layer's fall rule) is a different, wider figure and is named so.
UPRIGHT_TILT_DEG = 10.0


def tilt_rad(gravity_torso: np.ndarray) -> float:
    """Angle between the torso's up axis and the world's up axis."""
    return float(np.arccos(np.clip(-gravity_torso[2], -1.0, 1.0)))


def pitch_roll_rad(gravity_torso: np.ndarray) -> tuple[float, float]:
    """Torso pitch and roll (rad), read off the gravity direction, so defined for any yaw.

    Pitch is the right-handed rotation about the torso's y axis (positive = leaning
    forward), roll about its x axis (positive = leaning to the robot's right).
    """
    gx, gy, gz = (float(v) for v in gravity_torso)
    pitch = float(np.arctan2(gx, -gz))  # leaning forward tips gravity towards +x in the torso frame
    roll = float(np.arctan2(-gy, -gz))
    return pitch, roll
