"""The policy's part of one control tick, shared by the control loop and ``replay --rerun``.

Both call :meth:`PolicyTick.step` once per tick with the tick's safety mode, so the order
below is written once and the re-run cannot drift from the daemon:

1. The safety layer has already settled this tick's mode (``Safety.decide``); the policy
   follows only on ``run`` ticks. During ``startup``, ``hold`` and ``fallen`` it is not
   called at all: its recurrent state and the action history stay as they were, and the
   log records no action (``null``) for the tick.
2. On the first ``run`` tick after any other mode (start of the run, after a stale phone,
   a re-arm, a reconnect), *before* the policy acts: ``policy.reset()``, and the action
   history is filled with the pose the servos are commanded to, expressed as an action
   (``ObservationSpec.pose_action``; all zeros after the start-up move to the nominal
   pose). The simulator's env starts an episode the same way: its history is filled with
   the commanded initial pose (``ActionHistory.fill``).
3. Build the observation from the torso orientation, gyro and history; ``policy.act``.
   A policy that raises (with ``on_error`` given) yields a NaN action, which the safety
   layer rejects (the robot holds); without ``on_error`` the exception propagates. An
   output outside the policy's contract (not ``spec.n_actions`` finite values in [-1, 1])
   is refused the same way, and ``on_refused`` hears why: clipping it would move the
   servos on whatever a broken network produced.
4. Push the action (clipped to [-1, 1], NaN as 0) onto the history.

No torch, no MuJoCo: this runs on the daemon's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies.baselines import Policy
from sim.observation import ActionHistory, ObservationSpec
from sim.servo_command import holds_frame


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """What the policy did this tick: its action (None: not called) and the history fill if reset."""

    action: np.ndarray | None
    reset_action: np.ndarray | None  # the action the history was filled with, on a reset tick


_NOT_CALLED = PolicyStep(None, None)


class PolicyTick:
    """A policy and its action history, advanced one control tick at a time."""

    def __init__(self, policy: Policy, spec: ObservationSpec,
                 on_error: Callable[[Exception], None] | None = None,
                 on_refused: Callable[[str], None] | None = None):
        self.policy = policy
        self.spec = spec
        self.history = ActionHistory(spec)
        self.on_error = on_error
        self.on_refused = on_refused
        self._following = False

    def step(self, following: bool, quat_wxyz: np.ndarray | None, gyro_torso_rad_s: np.ndarray | None,
             start_action: Callable[[], np.ndarray]) -> PolicyStep:
        """One tick. ``following``: the safety mode is ``run``. ``start_action()``: the commanded
        pose as an action, asked for only on the first tick of following.

        Without an orientation and a gyro there is no observation: the policy is not called
        (the tick still counts as following, so a reset is not repeated).
        """
        if not following:
            self._following = False
            return _NOT_CALLED
        reset_action = None
        if not self._following:
            self._following = True
            reset_action = np.asarray(start_action(), dtype=np.float64)
            self.policy.reset()
            self.history.fill(reset_action)
        if quat_wxyz is None or gyro_torso_rad_s is None:
            return PolicyStep(None, reset_action)
        obs = self.spec.build(quat_wxyz, gyro_torso_rad_s, self.history)
        try:
            action = np.asarray(self.policy.act(obs), dtype=np.float64)
        except Exception as exc:  # a broken policy must not take the loop down: hold instead
            if self.on_error is None:
                raise
            self.on_error(exc)
            action = np.full(self.spec.n_actions, np.nan)
        else:
            problem = contract_violation(action, self.spec.n_actions)
            if problem is not None:
                if self.on_refused is not None:
                    self.on_refused(problem)
                action = np.full(self.spec.n_actions, np.nan)
        self.history.push(np.clip(np.nan_to_num(action), -1.0, 1.0))
        return PolicyStep(action, reset_action)


def contract_violation(action: np.ndarray, n_actions: int) -> str | None:
    """Why ``action`` is not a policy output the robot may follow (None: it is one)."""
    if action.shape != (n_actions,):
        return f"action shape {action.shape}, the contract has ({n_actions},)"
    if holds_frame(action):
        return "action not finite"
    if np.max(np.abs(action)) > 1.0:
        return f"action {np.max(np.abs(action)):.3g} outside [-1, 1]"
    return None
