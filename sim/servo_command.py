"""The rules the simulator and the daemon must share: how targets become pulses, and what a fall is.

The daemon's :class:`robotd.daemon.safety.Safety` and the simulator's env both call these, so a policy
trained in the simulator meets, on the robot, the same slew limit, the same clamp to the
calibrated limits, the same pulse rounding and deadband, and the same fall rule:

* :func:`limit_targets`: one tick's step towards the policy's targets, slew-limited to
  ``safety.max_slew_rad_s`` and clamped to the joints' calibrated limits.
* :func:`pulses_to_send`: the commanded angles as whole-microsecond pulses, and which channels
  moved more than ``safety.deadband_us`` from what the board last got (only those are sent; a
  servo keeps pulling towards its last pulse).
* :func:`holds_frame`: a non-finite action is not followed at all: the whole frame is held.
* :class:`FallRule`: tilt beyond ``safety.fall_tilt_deg`` for ``safety.fall_ticks`` ticks in a
  row, judged on the orientation the controller sees (the phone's, through the mount).

Numpy and plain floats only: the daemon's hot path imports this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration import Calibration


@dataclass(frozen=True, slots=True)
class LimitedTargets:
    """One tick of :func:`limit_targets`: the angles commanded now and what limited them."""

    commanded_rad: np.ndarray
    slewed: bool  # at least one joint was slowed to the slew limit
    clamped: bool  # at least one joint was held at a calibrated limit


def max_step_rad(calibration: Calibration, dt_s: float) -> float:
    """The largest change of a joint's commanded angle in one tick of ``dt_s``."""
    return calibration.safety.max_slew_rad_s * dt_s


def limit_targets(calibration: Calibration, commanded_rad: np.ndarray, targets_rad: np.ndarray,
                  max_step: float) -> LimitedTargets:
    """Move from the last commanded angles towards finite ``targets_rad`` by at most ``max_step``.

    The slew limit comes first and the clamp second, so a target beyond a limit is approached
    at the slew rate and then held at the limit.
    """
    step = targets_rad - commanded_rad
    # minimum/maximum rather than np.clip: a third of the cost on 17 values (hot path).
    limited = np.minimum(np.maximum(step, -max_step), max_step)
    wanted = commanded_rad + limited
    clamped = calibration.clamp_angles(wanted)
    return LimitedTargets(clamped, bool((limited != step).any()), bool((clamped != wanted).any()))


def pulses_to_send(calibration: Calibration, commanded_rad: np.ndarray,
                   sent_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pulses for ``commanded_rad``, mask of channels that moved more than the deadband).

    ``sent_us`` is what the board last got per channel (``inf`` where unknown: always sent).
    """
    pulses = np.rint(calibration.angles_to_pulses(commanded_rad))
    return pulses, np.abs(pulses - sent_us) > calibration.safety.deadband_us


def holds_frame(action: np.ndarray) -> bool:
    """Whether ``action`` is held instead of followed: it has a NaN or infinite component.

    The one rule for a non-finite action, for the daemon, its re-run and the simulator: the
    whole frame is held (the servos keep the pose last commanded, nothing is sent), never
    patched joint by joint, since a network that produced one NaN has no trustworthy joint
    left; a policy trained in the simulator meets on the robot what it met there.
    """
    return not np.isfinite(action).all()


def up_z_of_quat(quat_wxyz) -> float:
    """World-z component of the torso's up axis (the cosine of its tilt) for a torso->world quaternion."""
    x, y = float(quat_wxyz[1]), float(quat_wxyz[2])
    return 1.0 - 2.0 * (x * x + y * y)


def tilt_deg_of_up_z(up_z: float) -> float:
    """The torso's angle from vertical (degrees) for its up-z (:func:`up_z_of_quat`)."""
    return math.degrees(math.acos(max(-1.0, min(1.0, up_z))))


class FallRule:
    """The fall rule: tilt beyond ``fall_tilt_deg`` on ``fall_ticks`` consecutive ticks.

    :meth:`update` takes one tick's torso up-z (:func:`up_z_of_quat`) and says whether the
    rule fires on this tick (the tick the count reaches ``fall_ticks``, and every tilted
    tick after it). Ticks without fresh orientation are not fed: they neither count nor
    break a run.
    """

    __slots__ = ("min_up_z", "fall_ticks", "tilted_ticks")

    def __init__(self, calibration: Calibration):
        cfg = calibration.safety
        self.min_up_z = math.cos(math.radians(cfg.fall_tilt_deg))  # tilt > threshold <=> up_z < cos(threshold)
        self.fall_ticks = int(cfg.fall_ticks)
        self.tilted_ticks = 0

    def reset(self) -> None:
        self.tilted_ticks = 0

    def tilted(self, up_z: float) -> bool:
        return up_z < self.min_up_z

    def update(self, up_z: float) -> bool:
        self.tilted_ticks = self.tilted_ticks + 1 if up_z < self.min_up_z else 0
        return self.tilted_ticks >= self.fall_ticks
