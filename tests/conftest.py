"""Test-wide setup: no test reads or writes the real user's robot calibration.

``robotd`` finds the robot's calibration in ``$XDG_CONFIG_HOME/robotd/robot.toml``; every
test (and every daemon or tool a test starts, which inherits the environment) gets an empty
config directory of its own session instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile


def pytest_configure(config) -> None:  # before collection: module-level load_calibration() sees it
    config_home = tempfile.mkdtemp(prefix="robotd-test-config-")
    os.environ["XDG_CONFIG_HOME"] = config_home
    config.add_cleanup(lambda: shutil.rmtree(config_home, ignore_errors=True))
