"""Turn ``--policy NAME_OR_PATH`` into a policy the loop can run (no torch import)."""

from __future__ import annotations

import warnings
from pathlib import Path

from calibration import Calibration
from policies.baselines import BUILTIN_POLICIES, Policy
from sim.observation import ObservationSpec


#: What ``robotd run``, ``robotd rollout`` and ``robotd eval`` run when no policy is named.
DEFAULT_POLICY = "pd"


class PolicyLoadError(ValueError):
    """The named policy does not exist or does not fit this robot."""


def load_policy(name_or_path: str, calibration: Calibration) -> Policy:
    """A built-in policy by name (``pd``, ``hold``) or a checkpoint file checked against the robot."""
    if name_or_path in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name_or_path](ObservationSpec())
    path = Path(name_or_path)
    if not path.exists():
        raise PolicyLoadError(
            f"--policy {name_or_path!r}: not a built-in policy ({', '.join(BUILTIN_POLICIES)}) and no such file"
        )
    from policies.checkpoint import CheckpointError
    from policies.runtime import load_policy_checkpoint

    try:
        # The checkpoint's own observation contract must be one this robot can build (known
        # joints, supported version, network sizes that fit it); a mismatch is an error.
        policy = load_policy_checkpoint(path, calibration_identity=None)
    except (CheckpointError, ValueError, KeyError, OSError) as exc:
        raise PolicyLoadError(f"--policy {name_or_path}: {exc}") from exc
    trained_on = policy.runtime.meta.calibration_identity
    if trained_on != calibration.identity:
        # Re-trimming servos changes the calibration's identity but not what the policy sees:
        # say so loudly rather than refuse to run.
        warnings.warn(f"policy {path.name} was trained with calibration {trained_on!r}; this robot is "
                      f"{calibration.identity!r}", stacklevel=2)
    return policy
