"""The daemon's hot path must not import torch or MuJoCo (start-up time, memory, the real robot)."""

from __future__ import annotations

import subprocess
import sys


def test_daemon_and_checkpoint_runtime_import_neither_torch_nor_mujoco() -> None:
    code = (
        "import sys\n"
        "import robotd.daemon, robotd.cli, robotd.policy_select, policies.runtime, policies.checkpoint\n"
        "heavy = sorted(m for m in ('torch', 'mujoco', 'gymnasium') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"hot path imported: {out}"
