"""Robot description and calibration (TOML), its loader/validator and calibration procedures."""

from calibration.description import (
    DEFAULT_CALIBRATION_PATH,
    JOINT_NAMES,
    LEG_JOINTS,
    Calibration,
    CalibrationError,
    Joint,
    SafetyConfig,
    ServoTiming,
    load_calibration,
    parse_calibration,
)
from calibration.location import (
    TEMPLATE_CALIBRATION_PATH,
    calibration_to_update,
    create_from_template,
    find_calibration,
    user_calibration_path,
)

__all__ = [
    "DEFAULT_CALIBRATION_PATH", "JOINT_NAMES", "LEG_JOINTS", "Calibration", "CalibrationError",
    "Joint", "SafetyConfig", "ServoTiming", "load_calibration", "parse_calibration",
    "TEMPLATE_CALIBRATION_PATH", "calibration_to_update", "create_from_template", "find_calibration",
    "user_calibration_path",
]
