"""Robot description + calibration: load, validate, convert joint angles to pulses.

Everything that maps a joint angle to a servo pulse lives here and only here, so the
simulator and the daemon can never disagree about it. A broken file fails with a
:class:`CalibrationError` naming the file, the key and the reason.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from calibration.location import TEMPLATE_CALIBRATION_PATH, find_calibration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

DEFAULT_CALIBRATION_PATH = TEMPLATE_CALIBRATION_PATH  # the name the tests and older callers use

#: Absolute pulse range any rtrobot/MG996R channel may ever be commanded to.
PULSE_MIN_US = 500
PULSE_MAX_US = 2500

#: The 17 joints of the kit, in the canonical order used by every array in the project.
JOINT_NAMES: tuple[str, ...] = (
    "neck_yaw",
    "r_shoulder_pitch", "r_shoulder_roll", "r_elbow",
    "l_shoulder_pitch", "l_shoulder_roll", "l_elbow",
    "r_hip_roll", "r_hip_pitch", "r_knee", "r_ankle_pitch", "r_ankle_roll",
    "l_hip_roll", "l_hip_pitch", "l_knee", "l_ankle_pitch", "l_ankle_roll",
)
LEG_JOINTS: tuple[str, ...] = tuple(n for n in JOINT_NAMES if n[2:5] in ("hip", "kne", "ank"))


class CalibrationError(ValueError):
    """A calibration file is unreadable or invalid: names file, key and reason."""

    def __init__(self, path: Path | str, key: str, reason: str):
        self.path = str(path)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.path}: {key}: {reason}")


@dataclass(frozen=True)
class Joint:
    """One servo joint: its board channel and its angle <-> pulse map."""

    name: str
    channel: int
    axis: tuple[float, float, float]
    neutral_us: float
    direction: int
    us_per_rad: float
    min_us: float
    max_us: float

    @cached_property
    def min_rad(self) -> float:
        return min(self.pulse_to_angle(self.min_us), self.pulse_to_angle(self.max_us))

    @cached_property
    def max_rad(self) -> float:
        return max(self.pulse_to_angle(self.min_us), self.pulse_to_angle(self.max_us))

    def angle_to_pulse(self, angle_rad: float) -> float:
        """Unclamped pulse for an angle; see :meth:`Calibration.angles_to_pulses` to clamp."""
        return self.neutral_us + self.direction * self.us_per_rad * angle_rad

    def pulse_to_angle(self, pulse_us: float) -> float:
        return (pulse_us - self.neutral_us) / (self.direction * self.us_per_rad)


@dataclass(frozen=True)
class SafetyConfig:
    deadband_us: float = 5.0
    max_slew_rad_s: float = 4.0
    stale_timeout_ms: float = 150.0
    fall_tilt_deg: float = 45.0
    fall_ticks: int = 3


@dataclass(frozen=True)
class ServoTiming:
    dead_time_ms: float = 100.0
    response_ms: float = 170.0


@dataclass(frozen=True)
class Calibration:
    """A validated robot description. Arrays are in :data:`JOINT_NAMES` order."""

    path: str
    name: str
    mass_kg: float
    stand_height_m: float
    board_channels: int
    startup_move_ms: int
    joints: tuple[Joint, ...]
    phone_to_torso: np.ndarray  # 3x3 rotation, phone frame -> torso frame
    gyro_bias_rad_s: np.ndarray  # (3,) in the phone frame
    safety: SafetyConfig
    servo_timing: ServoTiming
    nominal_rad: np.ndarray  # (17,)
    safe_rad: np.ndarray  # (17,)
    identity: str = field(default="")  # content hash, recorded in logs and checkpoints

    # Cached arrays for the vectorised conversion on the hot path.
    @cached_property
    def neutral_us(self) -> np.ndarray:
        return np.array([j.neutral_us for j in self.joints])

    @cached_property
    def channels(self) -> np.ndarray:
        return np.array([j.channel for j in self.joints], dtype=np.int64)

    @cached_property
    def min_us(self) -> np.ndarray:
        return np.array([j.min_us for j in self.joints])

    @cached_property
    def max_us(self) -> np.ndarray:
        return np.array([j.max_us for j in self.joints])

    @cached_property
    def min_rad(self) -> np.ndarray:
        return np.array([j.min_rad for j in self.joints])

    @cached_property
    def max_rad(self) -> np.ndarray:
        return np.array([j.max_rad for j in self.joints])

    @cached_property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @cached_property
    def signed_us_per_rad(self) -> np.ndarray:
        return np.array([j.direction * j.us_per_rad for j in self.joints])

    def joint(self, name: str) -> Joint:
        for j in self.joints:
            if j.name == name:
                return j
        raise KeyError(name)

    def index(self, name: str) -> int:
        return self.joint_names.index(name)

    def angles_to_pulses(self, angles_rad: np.ndarray) -> np.ndarray:
        """Pulses (us) for all 17 joints, clamped to each joint's calibrated limits.

        Non-finite angles map to the joint's neutral pulse clamped into limits; callers
        that care (the safety layer) reject them before this point.
        """
        angles = np.asarray(angles_rad, dtype=np.float64)
        if not np.isfinite(angles).all():
            angles = np.where(np.isfinite(angles), angles, 0.0)
        # minimum/maximum rather than np.clip: a third of the cost on 17 values (hot path).
        pulses = self.unlimited_pulses(np.minimum(np.maximum(angles, -100.0), 100.0))
        return np.minimum(np.maximum(pulses, self.min_us), self.max_us)

    def unlimited_pulses(self, angles_rad: np.ndarray) -> np.ndarray:
        """Pulses (us) for all 17 finite joint angles, not clamped to the calibrated limits.

        Only for the operator's jog (``robotd calibrate``), whose limits may be wider than the
        calibrated ones while they are being found; everything else uses :meth:`angles_to_pulses`.
        """
        return self.neutral_us + self.signed_us_per_rad * angles_rad

    def pulses_to_angles(self, pulses_us: np.ndarray) -> np.ndarray:
        return (np.asarray(pulses_us, dtype=np.float64) - self.neutral_us) / self.signed_us_per_rad

    def clamp_angles(self, angles_rad: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(angles_rad, self.min_rad), self.max_rad)


# ----------------------------------------------------------------------------- loading


#: The keys each table of the calibration TOML may hold (anything else is an error).
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "robot": ("name", "mass_kg", "stand_height_m"),
    "board": ("channels", "startup_move_ms"),
    "imu": ("phone_to_torso", "gyro_bias_rad_s"),
    "servo_timing": ("dead_time_ms", "response_ms"),
    "safety": ("deadband_us", "max_slew_rad_s", "stale_timeout_ms", "fall_tilt_deg", "fall_ticks"),
    "poses": ("nominal", "safe"),
    "joints": ("name", "channel", "axis", "neutral_us", "direction", "us_per_rad", "min_us", "max_us"),
}


def unknown_key_reason(name: str, known: tuple[str, ...] | list[str], what: str = "key") -> str:
    """``unknown key 'x'; did you mean 'y'?`` (or the list of valid keys when none is close)."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(known)}"
    return f"unknown {what} {name!r}; {hint}"


class _Reader:
    """Typed access to a TOML table that raises CalibrationError with the full key path."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str = ""):
        self.path = path
        self.table = table
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, reason: str) -> CalibrationError:
        return CalibrationError(self.path, self.key(name), reason)

    def only(self, known: tuple[str, ...], what: str = "key") -> None:
        """Refuse keys this table does not have, naming the nearest valid one.

        A typo (``max_slew_rads``) would otherwise be ignored and the default kept silently.
        """
        for name in self.table:
            if name not in known:
                raise self.fail(name, unknown_key_reason(name, known, what))

    def sub(self, name: str, required: bool = True) -> "_Reader":
        value = self.table.get(name)
        if value is None:
            if required:
                raise self.fail(name, "missing table")
            value = {}
        if not isinstance(value, dict):
            raise self.fail(name, f"expected a table, got {type(value).__name__}")
        return _Reader(self.path, value, f"{self.key(name)}.")

    def number(self, name: str, default: float | None = None, *, positive: bool = False) -> float:
        if name not in self.table:
            if default is None:
                raise self.fail(name, "missing")
            return float(default)
        value = self.table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise self.fail(name, f"must be finite, got {value!r}")
        if positive and value <= 0:
            raise self.fail(name, f"must be > 0, got {value!r}")
        return float(value)

    def integer(self, name: str, default: int | None = None) -> int:
        if name not in self.table:
            if default is None:
                raise self.fail(name, "missing")
            return default
        value = self.table[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"expected an integer, got {type(value).__name__} {value!r}")
        return value

    def string(self, name: str, default: str | None = None) -> str:
        if name not in self.table:
            if default is None:
                raise self.fail(name, "missing")
            return default
        value = self.table[name]
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"expected a non-empty string, got {value!r}")
        return value

    def vector(self, name: str, length: int, default: list[float] | None = None) -> np.ndarray:
        if name not in self.table:
            if default is None:
                raise self.fail(name, "missing")
            return np.array(default, dtype=np.float64)
        value = self.table[name]
        if not isinstance(value, list) or len(value) != length:
            raise self.fail(name, f"expected a list of {length} numbers, got {value!r}")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.fail(name, f"expected finite numbers, got {v!r}")
        return np.array(value, dtype=np.float64)


def _rotation(reader: _Reader, name: str) -> np.ndarray:
    rows = reader.table.get(name)
    if not isinstance(rows, list) or len(rows) != 3:
        raise reader.fail(name, f"expected a 3x3 rotation matrix (3 rows of 3), got {rows!r}")
    matrix = np.vstack([_Reader(reader.path, {"row": r}, reader.key(name) + ".").vector("row", 3) for r in rows])
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-3) or np.linalg.det(matrix) < 0:
        raise reader.fail(name, "not a rotation matrix (rows must be orthonormal, determinant +1)")
    # Re-orthonormalise so small rounding in a hand-edited file does not accumulate.
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt


def _joint(reader: _Reader, seen_channels: dict[int, str], channels: int) -> Joint:
    name = reader.string("name")
    if name not in JOINT_NAMES:
        raise reader.fail("name", f"unknown joint {name!r}; known joints: {', '.join(JOINT_NAMES)}")
    channel = reader.integer("channel")
    if not 1 <= channel <= channels:
        raise reader.fail("channel", f"must be in 1..{channels}, got {channel}")
    if channel in seen_channels:
        raise reader.fail("channel", f"duplicate channel {channel} (already used by {seen_channels[channel]})")
    seen_channels[channel] = name
    axis = reader.vector("axis", 3)
    if not math.isclose(float(np.linalg.norm(axis)), 1.0, abs_tol=1e-3):
        raise reader.fail("axis", f"must be a unit vector, got {axis.tolist()}")
    direction = reader.integer("direction")
    if direction not in (-1, 1):
        raise reader.fail("direction", f"must be 1 or -1, got {direction}")
    pulses = {}
    for key in ("neutral_us", "min_us", "max_us"):
        pulses[key] = reader.number(key)
        if not PULSE_MIN_US <= pulses[key] <= PULSE_MAX_US:
            raise reader.fail(key, f"pulse {pulses[key]:g} us outside {PULSE_MIN_US}..{PULSE_MAX_US} us")
    if pulses["min_us"] > pulses["max_us"]:
        raise reader.fail("min_us", f"min_us {pulses['min_us']:g} > max_us {pulses['max_us']:g}")
    if not pulses["min_us"] <= pulses["neutral_us"] <= pulses["max_us"]:
        raise reader.fail("neutral_us", "must lie within min_us..max_us")
    return Joint(
        name=name,
        channel=channel,
        axis=tuple(axis.tolist()),
        neutral_us=pulses["neutral_us"],
        direction=direction,
        us_per_rad=reader.number("us_per_rad", positive=True),
        min_us=pulses["min_us"],
        max_us=pulses["max_us"],
    )


def _pose(reader: _Reader, name: str, joints: dict[str, Joint], base: np.ndarray | None) -> np.ndarray:
    table = reader.sub(name, required=base is None)
    pose = np.zeros(len(JOINT_NAMES)) if base is None else base.copy()
    for joint_name in table.table:
        if joint_name not in joints:
            raise table.fail(joint_name, unknown_key_reason(joint_name, list(joints), "joint"))
        angle = table.number(joint_name)
        joint = joints[joint_name]
        if not joint.min_rad - 1e-9 <= angle <= joint.max_rad + 1e-9:
            raise table.fail(
                joint_name,
                f"angle {angle:g} rad outside the joint's calibrated range "
                f"{joint.min_rad:.3f}..{joint.max_rad:.3f} rad",
            )
        pose[JOINT_NAMES.index(joint_name)] = angle
    return pose


def parse_calibration(data: Mapping[str, Any], path: Path | str = "<memory>") -> Calibration:
    """Validate a parsed TOML document; see :func:`load_calibration`."""
    import hashlib
    import json

    path = Path(path)
    root = _Reader(path, data)
    root.only(tuple(SECTION_KEYS), "section")
    robot = root.sub("robot")
    board = root.sub("board")
    robot.only(SECTION_KEYS["robot"])
    board.only(SECTION_KEYS["board"])
    channels = board.integer("channels", 32)
    if not 1 <= channels <= 64:
        raise board.fail("channels", f"must be in 1..64, got {channels}")
    raw_joints = data.get("joints")
    if not isinstance(raw_joints, list) or not raw_joints:
        raise root.fail("joints", "expected an array of [[joints]] tables")
    seen: dict[int, str] = {}
    by_name: dict[str, Joint] = {}
    for i, raw in enumerate(raw_joints):
        if not isinstance(raw, dict):
            raise root.fail(f"joints[{i}]", "expected a table")
        reader = _Reader(path, raw, f"joints[{i}].")
        reader.only(SECTION_KEYS["joints"])
        joint = _joint(reader, seen, channels)
        if joint.name in by_name:
            raise CalibrationError(path, f"joints[{i}].name", f"duplicate joint {joint.name!r}")
        by_name[joint.name] = joint
    missing = [n for n in JOINT_NAMES if n not in by_name]
    if missing:
        raise root.fail("joints", f"missing joints: {', '.join(missing)}")
    imu = root.sub("imu")
    safety = root.sub("safety", required=False)
    timing = root.sub("servo_timing", required=False)
    poses = root.sub("poses")
    for reader, section in ((imu, "imu"), (safety, "safety"), (timing, "servo_timing"), (poses, "poses")):
        reader.only(SECTION_KEYS[section])
    nominal = _pose(poses, "nominal", by_name, None)
    safe = _pose(poses, "safe", by_name, nominal)
    startup_move_ms = board.integer("startup_move_ms", 2000)
    if not 0 <= startup_move_ms <= 9999:  # sent as the board's T<ms> field (documented up to 9999)
        raise board.fail("startup_move_ms", f"must be in 0..9999, got {startup_move_ms}")
    deadband_us = safety.number("deadband_us", 5.0)
    if deadband_us < 0:
        raise safety.fail("deadband_us", f"must be >= 0, got {deadband_us:g}")
    fall_ticks = safety.integer("fall_ticks", 3)
    if fall_ticks < 1:
        raise safety.fail("fall_ticks", f"must be >= 1, got {fall_ticks}")
    fall_tilt = safety.number("fall_tilt_deg", 45.0, positive=True)
    if fall_tilt >= 180:
        raise safety.fail("fall_tilt_deg", f"must be < 180, got {fall_tilt:g}")
    identity = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Calibration(
        path=str(path),
        name=robot.string("name"),
        mass_kg=robot.number("mass_kg", positive=True),
        stand_height_m=robot.number("stand_height_m", positive=True),
        board_channels=channels,
        startup_move_ms=startup_move_ms,
        joints=tuple(by_name[n] for n in JOINT_NAMES),
        phone_to_torso=_rotation(imu, "phone_to_torso"),
        gyro_bias_rad_s=imu.vector("gyro_bias_rad_s", 3, [0.0, 0.0, 0.0]),
        safety=SafetyConfig(
            deadband_us=deadband_us,
            max_slew_rad_s=safety.number("max_slew_rad_s", 4.0, positive=True),
            stale_timeout_ms=safety.number("stale_timeout_ms", 150.0, positive=True),
            fall_tilt_deg=fall_tilt,
            fall_ticks=fall_ticks,
        ),
        servo_timing=ServoTiming(
            dead_time_ms=timing.number("dead_time_ms", 100.0),
            response_ms=timing.number("response_ms", 170.0, positive=True),
        ),
        nominal_rad=nominal,
        safe_rad=safe,
        identity=f"{robot.string('name')}@{identity}",
    )


def load_calibration(path: Path | str | None = None) -> Calibration:
    """Load and validate a calibration TOML.

    ``path=None`` finds the robot's calibration as every command does
    (:func:`calibration.location.find_calibration`: the user's config file, else the template).
    """
    path = find_calibration(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(path, "<file>", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(path, "<file>", f"cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(path, "<toml>", f"not valid TOML: {exc}") from None
    return parse_calibration(data, path)
