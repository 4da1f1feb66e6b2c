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

__all__ = [
    "DEFAULT_CALIBRATION_PATH", "JOINT_NAMES", "LEG_JOINTS", "Calibration", "CalibrationError",
    "Joint", "SafetyConfig", "ServoTiming", "load_calibration", "parse_calibration",
]
