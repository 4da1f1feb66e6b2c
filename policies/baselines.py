"""Hand-written baseline policies behind the same interface as the learned ones.

A policy maps an observation (``sim.observation.ObservationSpec`` layout) to an action in
[-1, 1] for the controlled joints. ``hold`` keeps the nominal pose; ``pd`` balances the torso
with hips and ankles. Both are numpy-only: the daemon's hot path runs them without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np

from sim.observation import ObservationSpec, pitch_roll_rad


class Policy(Protocol):
    """What the control loop and the simulator need from a policy."""

    name: str
    identity: str
    spec: ObservationSpec

    def reset(self) -> None:
        """Forget any recurrent state (start of an episode or a re-arm)."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action in [-1, 1]^spec.n_actions for one observation."""


class HoldPolicy:
    """Hold the nominal pose: action zero, whatever the phone says."""

    name = "hold"
    identity = "hold"

    def __init__(self, spec: ObservationSpec):
        self.spec = spec
        self._zero = np.zeros(spec.n_actions)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._zero


@dataclass(frozen=True)
class PdGains:
    """Joint offset (rad) per radian of torso tilt, and per rad/s of tilt rate."""

    # Hand-picked on the simulated robot (10 N pushes, 100 ms servo dead time): a small grid over
    # kp_hip 0.3-1.0, kp_ankle 0.1-0.4, kd 0-0.08, 3 seeds each. The ankles move the whole body,
    # so their gain stays low; more damping than 0.03 oscillates against the delay.
    kp_hip: float = 0.6
    kp_ankle: float = 0.1
    kd_hip: float = 0.03
    kd_ankle: float = 0.03
    # Torso tilt (rad) the proportional term ignores: it acts on the tilt beyond this radius
    # only, so a controller can leave small, fast disturbances to the stance (the delay makes
    # reacting to them worse than holding) and still push back against a lasting lean.
    deadband_rad: float = 0.0


def pd_spec(gains: PdGains) -> str:
    """``pd:kp_hip=0.6,...``: the ``--policy`` text that runs these gains, and the policy's identity.

    A zero deadband is not written: gains without one keep the identity they had before the
    deadband existed (latency logs and tuning studies name policies by it).
    """
    values = {k: v for k, v in asdict(gains).items() if k != "deadband_rad" or v != 0.0}
    return "pd:" + ",".join(f"{k}={float(v)!r}" for k, v in values.items())


def parse_pd_spec(text: str) -> PdGains:
    """The gains of ``pd:kp_hip=0.8,kd_hip=0.02`` (unnamed gains keep their defaults); ValueError says why."""
    name, _, body = text.partition(":")
    if name != "pd":
        raise ValueError(f"{text!r}: a PD spec starts with 'pd:'")
    known = {f.name for f in fields(PdGains)}
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{text!r}: {item!r} is not GAIN=VALUE with GAIN one of {', '.join(sorted(known))}")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"{text!r}: {key}={value!r} is not a number") from None
        if not np.isfinite(values[key]):
            raise ValueError(f"{text!r}: {key} must be finite")
    if values.get("deadband_rad", 0.0) < 0.0:
        raise ValueError(f"{text!r}: deadband_rad must be >= 0")
    return PdGains(**values)


class PdPolicy:
    """PD balance on torso pitch and roll through hip and ankle pitch/roll.

    Sign reasoning (torso frame x forward, y left, z up; joints right-handed about their
    axes, see calibration/robot.toml): with the feet on the ground, raising hip_pitch
    rotates the torso backwards relative to the thigh and raising ankle_pitch tilts the
    shank backwards, so a forward lean (pitch > 0) is corrected by positive offsets on
    both; roll works the same way about x. Legs mirror through each joint's axis, so
    both sides take the same sign in joint space. With a deadband the proportional term sees
    the (pitch, roll) tilt shortened by ``deadband_rad`` along its own direction (zero inside).
    """

    name = "pd"

    def __init__(self, spec: ObservationSpec, gains: PdGains = PdGains()):
        self.spec = spec
        self.gains = gains
        self.identity = pd_spec(gains)
        self._coef_angle = np.zeros((spec.n_actions, 2))  # columns: pitch, roll
        self._coef_rate = np.zeros((spec.n_actions, 2))
        for i, joint in enumerate(spec.controlled_joints):
            part = joint[2:]
            column = 0 if part.endswith("pitch") else 1 if part.endswith("roll") else None
            if column is None:
                continue  # knees and arms hold
            if part.startswith("hip"):
                kp, kd = gains.kp_hip, gains.kd_hip
            elif part.startswith("ankle"):
                kp, kd = gains.kp_ankle, gains.kd_ankle
            else:
                continue
            self._coef_angle[i, column] = kp / spec.action_scale_rad
            self._coef_rate[i, column] = kd / spec.action_scale_rad

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        pitch_rad, roll_rad = pitch_roll_rad(obs[0:3])
        gyro = obs[3:6] / self.spec.gyro_scale  # torso rad/s: x = roll rate, y = pitch rate
        angle = np.array([pitch_rad, roll_rad])
        if self.gains.deadband_rad > 0.0:
            tilt_rad = float(np.hypot(pitch_rad, roll_rad))
            angle *= max(0.0, 1.0 - self.gains.deadband_rad / tilt_rad) if tilt_rad > 0.0 else 0.0
        rate = np.array([gyro[1], gyro[0]])
        return np.clip(self._coef_angle @ angle + self._coef_rate @ rate, -1.0, 1.0)


BUILTIN_POLICIES = {"hold": HoldPolicy, "pd": PdPolicy}
