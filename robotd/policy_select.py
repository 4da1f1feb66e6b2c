"""Turn ``--policy NAME_OR_PATH`` into a policy the loop can run (no torch import)."""

from __future__ import annotations

from pathlib import Path

from calibration import Calibration
from policies.baselines import BUILTIN_POLICIES, Policy
from sim.observation import ObservationSpec


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
    from policies.runtime import load_policy_checkpoint

    return load_policy_checkpoint(path, calibration_identity=calibration.identity)
