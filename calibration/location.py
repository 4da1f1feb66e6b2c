"""Where the robot's calibration lives, found the same way by every command.

The packaged ``calibration/robot.toml`` is a template: a reinstall overwrites it, so the
calibration of *this* robot belongs in the user's config directory,
``$XDG_CONFIG_HOME/robotd/robot.toml`` (``~/.config/robotd/robot.toml`` when
``XDG_CONFIG_HOME`` is unset), or in a file the user names with ``--calibration``.

Reading (:func:`find_calibration`): the named file, else the user's file if it exists, else
the template. Writing (``robotd calibrate``, :func:`calibration_to_update`): the named file,
else the user's file, created from the template on the first save.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: The packaged template every robot's calibration starts from. Defined here, below the loader
#: (:mod:`calibration.description` imports this module, never the other way round).
TEMPLATE_CALIBRATION_PATH = Path(__file__).with_name("robot.toml")


def user_calibration_path() -> Path:
    """``$XDG_CONFIG_HOME/robotd/robot.toml``; a relative or empty XDG_CONFIG_HOME is ignored
    (as the XDG base-directory spec says), giving ``~/.config/robotd/robot.toml``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "robotd" / "robot.toml"


def find_calibration(path: Path | str | None = None) -> Path:
    """The calibration a command reads: ``path`` if given, else the user's, else the template."""
    if path is not None:
        return Path(path)
    user = user_calibration_path()
    return user if user.exists() else TEMPLATE_CALIBRATION_PATH


def calibration_to_update(path: Path | str | None = None) -> Path:
    """The calibration ``robotd calibrate`` saves into: ``path`` if given, else the user's."""
    return Path(path) if path is not None else user_calibration_path()


def create_from_template(path: Path | str) -> bool:
    """Copy the template to ``path`` if nothing is there yet (folders made); True if it did."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE_CALIBRATION_PATH, path)
    return True
