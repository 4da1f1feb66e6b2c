"""Turn ``--policy NAME_OR_PATH`` into a policy the loop can run (no torch import)."""

from __future__ import annotations

import warnings
from pathlib import Path

from calibration import Calibration
from policies.baselines import BUILTIN_POLICIES, PdPolicy, Policy, parse_pd_spec
from sim.observation import MAX_CLAMPED_FRACTION, ObservationSpec


#: Policies that ship with robotd, by name: trained checkpoints in ``policies/trained/`` (see its
#: README.md for how each was trained and how it scores).
SHIPPED_POLICIES = {"balance": Path(__file__).resolve().parents[2] / "policies" / "trained" / "balance.safetensors"}

#: What ``robotd run``, ``robotd rollout`` and ``robotd eval`` run when no policy is named.
DEFAULT_POLICY = "balance"


class PolicyLoadError(ValueError):
    """The named policy does not exist or does not fit this robot."""


def load_policy(name_or_path: str, calibration: Calibration, *, warn: bool = True,
                option: str = "--policy") -> Policy:
    """A built-in policy by name (``pd``, ``hold``, ``pd:kp_hip=0.8,...`` for PD with other gains)
    or a checkpoint file checked against the robot.

    With ``warn``, each of :func:`policy_mismatches` is a Python warning; the daemon passes
    False and reports them itself (console and log). ``option`` is how the command line names
    the policy, for the error message ("" where it is a positional argument, as in ``robotd eval``).
    """
    try:
        policy = _load(name_or_path)
    except PolicyLoadError as exc:
        raise PolicyLoadError(f"{option} {exc}" if option else str(exc)) from exc
    if warn:
        for problem in policy_mismatches(policy, calibration):
            warnings.warn(problem, stacklevel=2)
    return policy


def is_robot_policy_name(name: str) -> bool:
    """Whether ``name`` names a policy (not a file): shipped, built in, or PD with other gains."""
    return name in SHIPPED_POLICIES or name in BUILTIN_POLICIES or name.startswith("pd:")


def _load(name_or_path: str) -> Policy:
    if name_or_path in SHIPPED_POLICIES:
        name_or_path = str(SHIPPED_POLICIES[name_or_path])
    if name_or_path in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name_or_path](ObservationSpec())
    if name_or_path.startswith("pd:"):
        try:
            return PdPolicy(ObservationSpec(), parse_pd_spec(name_or_path))
        except ValueError as exc:
            raise PolicyLoadError(str(exc)) from None
    path = Path(name_or_path)
    if not path.exists():
        raise PolicyLoadError(
            f"{name_or_path!r}: not a built-in policy "
            f"({', '.join([*SHIPPED_POLICIES, *BUILTIN_POLICIES])}) and no such file"
        )
    from policies.checkpoint import CheckpointError
    from policies.runtime import load_policy_checkpoint

    try:
        # The checkpoint's own observation contract must be one this robot can build (known
        # joints, supported version, network sizes that fit it); a mismatch is an error.
        policy = load_policy_checkpoint(path, calibration_identity=None)
    except (CheckpointError, ValueError, KeyError, OSError) as exc:
        message = str(exc)
        if not message.startswith(f"{path}:"):  # the checkpoint's own errors name the file already
            message = f"{path}: {message}"
        raise PolicyLoadError(message) from exc
    return policy


def policy_mismatches(policy: Policy, calibration: Calibration) -> list[str]:
    """Where a policy and this robot's calibration disagree, one sentence each (empty: none).

    Not errors: re-trimming servos changes the calibration's identity but not what the policy
    sees, so the daemon runs and writes each mismatch into the log and onto the console.
    Checked: the calibration the checkpoint was trained with, that every controlled joint is
    one this robot has, and that the calibrated limits leave the policy its action range.
    """
    problems = []
    meta = getattr(getattr(policy, "runtime", None), "meta", None)
    if meta is not None and meta.calibration_identity != calibration.identity:
        problems.append(f"policy {policy.name} was trained with calibration {meta.calibration_identity!r}; "
                        f"this robot is {calibration.identity!r}")
    spec = policy.spec
    scale = spec.action_scale_rad
    for k, name in enumerate(spec.controlled_joints):
        if name not in calibration.joint_names:
            problems.append(f"controlled joint {name} is not in the calibration")
            continue
        i = calibration.index(name)
        centre = calibration.nominal_rad[i] + (spec.stance_rad[k] if spec.stance_rad else 0.0)
        low, high = centre - scale, centre + scale
        reachable = max(0.0, min(high, calibration.max_rad[i]) - max(low, calibration.min_rad[i]))
        if reachable < (1.0 - MAX_CLAMPED_FRACTION) * (high - low):
            problems.append(
                f"{name}: the policy's actions span {low:.3f}..{high:.3f} rad (nominal + stance +- action_scale_rad "
                f"{scale:g}) but the calibrated limits are {calibration.min_rad[i]:.3f}..{calibration.max_rad[i]:.3f} "
                f"rad: {100 * (1 - reachable / (high - low)):.0f} % of its range is clamped away")
    return problems
