"""Parsers for the UDP formats of the Android sensor-streaming apps the phone may run.

There is no standard phone-IMU protocol; users run whichever app they have (see
``docs/phone.md``). Every parser turns one datagram into a list of :class:`SensorReading`
in Android's SI units and phone frame, or raises :class:`MalformedPacket` with a short,
fixed reason. Parsers never raise anything else: the receiver counts reasons per packet
and a hostile or broken sender must not be able to stop it. Reasons are constant strings
(details go to ``MalformedPacket.detail``) so the per-reason counters stay bounded.

The hot path runs for every datagram (up to ~1000 per second), so checks are cheap and
ordered so that garbage is rejected before any real work.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

log = logging.getLogger("robotd.phone")

#: Larger datagrams are rejected before decoding: no supported app sends more than a few
#: hundred bytes, and a cheap length check bounds the work a flood can cause.
MAX_DATAGRAM_BYTES = 4096
#: Bound on any sensor value. Far above any phone sensor's range (accelerometers ~16 g,
#: gyroscopes ~35 rad/s, magnetometers ~5000 uT) yet small enough that squares stay finite
#: in the float32 AHRS, so one absurd packet cannot poison the filter state.
MAX_ABS_VALUE = 1e5
#: Bound on a phone timestamp (s): boot-time clocks and epoch milliseconds both fit.
MAX_PHONE_TIME_S = 1e10

KINDS: frozenset[str] = frozenset(
    {"accel", "gyro", "mag", "rotation_vector", "game_rotation_vector", "quaternion", "gravity", "linear_accel"}
)
#: Accepted value counts per kind. Android rotation vectors come as x,y,z with an optional
#: w and (rotation_vector only) a heading accuracy; "quaternion" is always w,x,y,z.
KIND_LENGTHS: dict[str, frozenset[int]] = {
    "accel": frozenset({3}),
    "gyro": frozenset({3}),
    "mag": frozenset({3}),
    "gravity": frozenset({3}),
    "linear_accel": frozenset({3}),
    "rotation_vector": frozenset({3, 4, 5}),
    "game_rotation_vector": frozenset({3, 4}),
    "quaternion": frozenset({4}),
}
#: Tolerance on a unit quaternion's norm: Android sends float32 values that drift a little.
_QUAT_NORM_TOLERANCE = 0.05


class MalformedPacket(ValueError):
    """A datagram that cannot be turned into readings; ``reason`` is short and constant."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SensorReading:
    """One sensor event: Android SI units in the phone frame, phone clock time if sent."""

    kind: str
    values: tuple[float, ...]
    phone_time_s: float | None


class Parser(Protocol):
    """What the receiver needs from a format: a name for logs/health and ``parse``."""

    @property
    def name(self) -> str: ...

    def parse(self, datagram: bytes) -> list[SensorReading]: ...


# ----------------------------------------------------------------------------- shared checks


def make_reading(kind: str, values: Sequence[float], phone_time_s: float | None) -> SensorReading:
    """Validate length, finiteness, range and (for orientations) unit norm of one reading.

    ``values`` must already be floats (the format-specific number parsing does that).
    """
    if len(values) not in KIND_LENGTHS[kind]:
        raise MalformedPacket("wrong value count", f"{kind} with {len(values)} values")
    for v in values:
        if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:  # also false for NaN
            raise MalformedPacket("non-finite or out-of-range value", f"{kind} {v!r}")
    if kind in ("rotation_vector", "game_rotation_vector", "quaternion"):
        norm_sq = math.fsum(v * v for v in values[:4])
        if len(values) == 3:
            if norm_sq > (1.0 + _QUAT_NORM_TOLERANCE) ** 2:
                raise MalformedPacket("rotation vector not unit", f"{kind} |xyz|^2={norm_sq:.3g}")
        elif abs(math.sqrt(norm_sq) - 1.0) > _QUAT_NORM_TOLERANCE:
            raise MalformedPacket("rotation vector not unit", f"{kind} |q|^2={norm_sq:.3g}")
    return SensorReading(kind, tuple(values), phone_time_s)


def _phone_time(seconds: float) -> float:
    if not 0.0 <= seconds <= MAX_PHONE_TIME_S:
        raise MalformedPacket("bad timestamp", repr(seconds))
    return seconds


def _check_size(datagram: bytes) -> None:
    if not isinstance(datagram, (bytes, bytearray, memoryview)):
        raise MalformedPacket("not bytes", type(datagram).__name__)
    if len(datagram) > MAX_DATAGRAM_BYTES:
        raise MalformedPacket("datagram too large", f"{len(datagram)} bytes")
    if not datagram:
        raise MalformedPacket("empty datagram")


def _text(datagram: bytes) -> str:
    """Size-checked, strict UTF-8 text; the CSV formats are ASCII in practice."""
    _check_size(datagram)
    try:
        return bytes(datagram).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("bad utf-8") from None


def _csv_float(token: str) -> float:
    """A CSV number: plain ASCII decimal notation only, finite.

    ``float()`` alone would also take ``1_0``, ``nan``, ``infinity`` and non-ASCII digits;
    the first and last are refused here, non-finite values by the range check.
    """
    if not token.isascii() or "_" in token:
        raise MalformedPacket("bad number", token[:16])
    try:
        value = float(token)
    except ValueError:
        raise MalformedPacket("bad number", token[:16]) from None
    if not math.isfinite(value):
        raise MalformedPacket("non-finite or out-of-range value", token[:16])
    return value


# ----------------------------------------------------------------------------- SensaGram


#: Android sensor type strings -> reading kinds. Others (light, uncalibrated, ...) are skipped.
ANDROID_SENSOR_TYPES: dict[str, str] = {
    "android.sensor.accelerometer": "accel",
    "android.sensor.gyroscope": "gyro",
    "android.sensor.magnetic_field": "mag",
    "android.sensor.rotation_vector": "rotation_vector",
    "android.sensor.game_rotation_vector": "game_rotation_vector",
    "android.sensor.gravity": "gravity",
    "android.sensor.linear_acceleration": "linear_accel",
}


def _json_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedPacket("wrong type", type(value).__name__)
    try:
        return float(value)
    except OverflowError:
        raise MalformedPacket("non-finite or out-of-range value") from None


class SensaGramParser:
    """SensaGram: one JSON object per sensor event, ``type``/``timestamp`` (ns)/``values``."""

    name = "sensagram"

    def parse(self, datagram: bytes) -> list[SensorReading]:
        text = _text(datagram)
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise MalformedPacket("not json") from None
        if not isinstance(obj, dict):
            raise MalformedPacket("not a json object")
        sensor_type = obj.get("type")
        values = obj.get("values")
        if not isinstance(sensor_type, str):
            raise MalformedPacket("missing sensor type")
        if not isinstance(values, list):
            raise MalformedPacket("missing values")
        timestamp_ns = obj.get("timestamp")
        phone_time_s = None if timestamp_ns is None else _phone_time(_json_number(timestamp_ns) / 1e9)
        kind = ANDROID_SENSOR_TYPES.get(sensor_type.lower())
        if kind is None:
            return []
        return [make_reading(kind, [_json_number(v) for v in values], phone_time_s)]


# ----------------------------------------------------------------------------- Sensorstream

#: Sensor id -> (reading kind, or None to skip, value count).
SensorstreamTable = Mapping[int, tuple[str | None, int]]

#: IMU+GPS Stream ids as sent by current versions: 85 is a rotation matrix (skipped),
#: 86 a w,x,y,z quaternion. GPS ids (1 position, 6 ECEF position, 7 velocity, 8 UTC time)
#: and the deprecated orientation angles (81) are skipped with their lengths.
SENSORSTREAM_IDS: dict[int, tuple[str | None, int]] = {
    1: (None, 3),
    3: ("accel", 3),
    4: ("gyro", 3),
    5: ("mag", 3),
    6: (None, 3),
    7: (None, 3),
    8: (None, 1),
    81: (None, 3),
    82: ("linear_accel", 3),
    83: ("gravity", 3),
    84: ("rotation_vector", 3),
    85: (None, 9),
    86: ("quaternion", 4),
}
#: Older versions: 85 is air pressure and 86 the battery temperature, one value each.
SENSORSTREAM_LEGACY_IDS: dict[int, tuple[str | None, int]] = {**SENSORSTREAM_IDS, 85: (None, 1), 86: (None, 1)}


class SensorstreamParser:
    """Sensorstream IMU+GPS: ``<t_s>, <id>, x,y,z, <id>, ...`` with a configurable id table.

    The table decides how many values follow each id. A packet that does not split
    exactly along the table (an id where a value should be, values left over, too few
    values) is rejected: with the 85/86 meanings differing between app versions, a guess
    could silently turn a pressure reading into a quaternion.
    """

    def __init__(self, table: SensorstreamTable = SENSORSTREAM_IDS, name: str = "sensorstream"):
        for sensor_id, (kind, length) in table.items():
            if kind is not None and (kind not in KINDS or length not in KIND_LENGTHS[kind]):
                raise ValueError(f"sensorstream id {sensor_id}: {kind!r} cannot have {length} values")
            if length < 1:
                raise ValueError(f"sensorstream id {sensor_id}: length must be >= 1")
        self._table = dict(table)
        self.name = name

    def parse(self, datagram: bytes) -> list[SensorReading]:
        tokens = _text(datagram).split(",")
        if len(tokens) < 2:
            raise MalformedPacket("no sensor data")
        phone_time_s = _phone_time(_csv_float(tokens[0].strip()))
        readings: list[SensorReading] = []
        seen: set[int] = set()
        i, n = 1, len(tokens)
        while i < n:
            id_token = tokens[i].strip()
            if not (id_token.isascii() and id_token.isdigit() and len(id_token) <= 3):
                raise MalformedPacket("bad sensor id", id_token[:16])
            sensor_id = int(id_token)
            entry = self._table.get(sensor_id)
            if entry is None:
                raise MalformedPacket("unknown sensor id", id_token)
            if sensor_id in seen:
                raise MalformedPacket("repeated sensor id", id_token)
            seen.add(sensor_id)
            kind, length = entry
            end = i + 1 + length
            if end > n:
                raise MalformedPacket("length inconsistent with id table", f"id {sensor_id} needs {length}")
            values = [_csv_float(token.strip()) for token in tokens[i + 1 : end]]
            if kind is not None:
                readings.append(make_reading(kind, values, phone_time_s))
            i = end
        return readings


# ----------------------------------------------------------------------------- HyperIMU

#: Names accepted in ``hyperimu:<order>``; ``skip`` stands for any other 3-value sensor.
HYPERIMU_SENSOR_NAMES: dict[str, str | None] = {
    "acc": "accel", "accel": "accel", "accelerometer": "accel",
    "gyro": "gyro", "gyroscope": "gyro",
    "mag": "mag", "magnetometer": "mag", "magnetic_field": "mag",
    "rot": "rotation_vector", "rotation_vector": "rotation_vector",
    "game_rot": "game_rotation_vector", "game_rotation_vector": "game_rotation_vector",
    "grav": "gravity", "gravity": "gravity",
    "lin": "linear_accel", "linear_accel": "linear_accel", "linear_acceleration": "linear_accel",
    "skip": None,
}
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}")


class HyperImuParser:
    """HyperIMU CSV: three values per sensor in the user's order.

    Optional leading fields: a timestamp (ms) and a MAC address; optional trailing
    fields: GPS latitude, longitude, altitude (``gps_values``) and NMEA sentences (from the
    first ``$`` on). Leading timestamp and trailing GPS are told apart by the field count,
    which is unambiguous as long as ``gps_values`` is not 1; any other count is rejected.
    A datagram may hold several terminated records.
    """

    def __init__(self, order: Sequence[str], terminator: str = "\r\n", gps_values: int = 3):
        if not order:
            raise ValueError("hyperimu needs the sensor order, e.g. hyperimu:acc,gyro")
        unknown = [s for s in order if s.lower() not in HYPERIMU_SENSOR_NAMES]
        if unknown:
            raise ValueError(f"unknown hyperimu sensors {unknown}; known: {', '.join(HYPERIMU_SENSOR_NAMES)}")
        if not terminator:
            raise ValueError("hyperimu terminator must not be empty")
        if gps_values < 0 or gps_values == 1:
            raise ValueError("gps_values must be 0 or >= 2 (1 would be ambiguous with a timestamp)")
        self.order: tuple[str | None, ...] = tuple(HYPERIMU_SENSOR_NAMES[s.lower()] for s in order)
        self.terminator = terminator
        self._n_values = 3 * len(self.order)
        self._extras = {0: False, 1: True, gps_values: False, gps_values + 1: True}  # extra count -> has timestamp
        self.name = "hyperimu:" + ",".join(s.lower() for s in order)

    def parse(self, datagram: bytes) -> list[SensorReading]:
        readings: list[SensorReading] = []
        records = 0
        for record in _text(datagram).split(self.terminator):
            record = record.strip()
            if record:
                records += 1
                readings.extend(self._record(record))
        if not records:
            raise MalformedPacket("no sensor data")
        return readings

    def _record(self, record: str) -> list[SensorReading]:
        tokens = [t.strip() for t in record.split(",")]
        for j, token in enumerate(tokens):
            if token.startswith("$"):  # NMEA sentences run to the end of the record
                del tokens[j:]
                break
        mac_at = next((j for j in range(min(2, len(tokens))) if _MAC.fullmatch(tokens[j])), None)
        if mac_at is not None:
            del tokens[mac_at]
        has_timestamp = self._extras.get(len(tokens) - self._n_values)
        if has_timestamp is None or (mac_at == 1 and not has_timestamp):
            raise MalformedPacket("unexplained field count", f"{len(tokens)} numbers for {len(self.order)} sensors")
        numbers = [_csv_float(t) for t in tokens]
        phone_time_s = _phone_time(numbers[0] / 1e3) if has_timestamp else None
        first = 1 if has_timestamp else 0
        readings = []
        for k, kind in enumerate(self.order):
            if kind is not None:
                readings.append(make_reading(kind, numbers[first + 3 * k : first + 3 * k + 3], phone_time_s))
        return readings


# ----------------------------------------------------------------------------- Sensors2OSC

#: OSC sensor names (last address segment, lower case, only letters and digits) -> kinds.
OSC_SENSOR_NAMES: dict[str, str] = {
    "accelerometer": "accel", "accel": "accel", "acc": "accel",
    "gyroscope": "gyro", "gyro": "gyro",
    "magneticfield": "mag", "magnetometer": "mag", "mag": "mag",
    "rotationvector": "rotation_vector",
    "gamerotationvector": "game_rotation_vector",
    "gravity": "gravity",
    "linearacceleration": "linear_accel", "linearaccel": "linear_accel",
}
_NON_ALNUM = re.compile(r"[^a-z0-9]")
_OSC_MAX_BUNDLE_DEPTH = 4


def _osc_string(data: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated, 4-byte padded ASCII string at ``pos``; returns it and the next offset."""
    end = data.find(b"\0", pos)
    if end < 0:
        raise MalformedPacket("bad osc string")
    next_pos = (end + 4) & ~3
    if next_pos > len(data):
        raise MalformedPacket("bad osc string")
    try:
        return data[pos:end].decode("ascii"), next_pos
    except UnicodeDecodeError:
        raise MalformedPacket("bad osc string") from None


def _osc_message(data: bytes) -> tuple[str, tuple[float, ...]]:
    """Address and float32/int32 arguments of one OSC message (the subset the apps send)."""
    address, pos = _osc_string(data, 0)
    if not address.startswith("/"):
        raise MalformedPacket("bad osc address")
    if pos >= len(data):
        raise MalformedPacket("osc message without type tags")
    tags, pos = _osc_string(data, pos)
    if not tags.startswith(",") or tags.strip(",fi") or tags.count(",") != 1:
        raise MalformedPacket("unsupported osc type tag", tags[:16])
    if len(data) - pos != 4 * (len(tags) - 1):
        raise MalformedPacket("osc argument size mismatch")
    return address, tuple(float(v) for v in struct.unpack_from(">" + tags[1:], data, pos))


def _osc_messages(data: bytes, depth: int = 0) -> list[tuple[str, tuple[float, ...]]]:
    """All messages of an OSC packet, flattening (nested) bundles; bundle time tags are ignored."""
    if not data.startswith(b"#bundle\0"):
        return [_osc_message(data)]
    if depth >= _OSC_MAX_BUNDLE_DEPTH:
        raise MalformedPacket("osc bundle nested too deep")
    if len(data) < 16:
        raise MalformedPacket("truncated osc bundle")
    messages = []
    pos = 16  # "#bundle\0" + 8-byte time tag
    while pos < len(data):
        if pos + 4 > len(data):
            raise MalformedPacket("truncated osc bundle")
        (size,) = struct.unpack_from(">i", data, pos)
        if size <= 0 or size % 4 or pos + 4 + size > len(data):
            raise MalformedPacket("bad osc bundle element size")
        messages.extend(_osc_messages(data[pos + 4 : pos + 4 + size], depth + 1))
        pos += 4 + size
    return messages


class Sensors2OscParser:
    """Sensors2OSC: binary OSC messages (or bundles), one address per sensor, no timestamp.

    Address strings differ between versions, so a sensor is matched by name: the last
    address segment, case-insensitive, punctuation ignored. ``addresses`` overrides that
    (full address, case-insensitive -> kind, or ``"skip"``).
    """

    name = "sensors2osc"

    def __init__(self, addresses: Mapping[str, str] | None = None):
        overrides = {a.lower(): k for a, k in (addresses or {}).items()}
        bad = {a: k for a, k in overrides.items() if k != "skip" and k not in KINDS}
        if bad:
            raise ValueError(f"unknown kinds in OSC address overrides: {bad}; kinds: {', '.join(sorted(KINDS))}")
        self._overrides = overrides

    def kind_of(self, address: str) -> str | None:
        address = address.lower()
        kind = self._overrides.get(address)
        if kind is not None:
            return None if kind == "skip" else kind
        return OSC_SENSOR_NAMES.get(_NON_ALNUM.sub("", address.rsplit("/", 1)[-1]))

    def parse(self, datagram: bytes) -> list[SensorReading]:
        _check_size(datagram)
        data = bytes(datagram)
        if len(data) % 4:
            raise MalformedPacket("osc packet not 4-byte aligned")
        readings = []
        for address, args in _osc_messages(data):
            kind = self.kind_of(address)
            if kind is not None:
                readings.append(make_reading(kind, args, None))
        return readings


# ----------------------------------------------------------------------------- auto-detection

HYPERIMU_NEEDS_ORDER = "csv is not sensorstream; HyperIMU needs --phone-format hyperimu:<order>"
#: Sensorstream rejections that mean "comma-separated numbers, but not Sensorstream's layout".
_NOT_SENSORSTREAM_CSV = frozenset({"bad sensor id", "bad number", "length inconsistent with id table"})


class AutoDetect:
    """Locks onto the format of the first datagram that a known parser accepts.

    JSON objects are SensaGram, ``/...`` or ``#bundle`` are OSC, CSV that splits along the
    Sensorstream id table is Sensorstream. Other CSV is probably HyperIMU, whose sensor
    order cannot be guessed, so it is refused with a reason saying so. ``status`` tells
    the health line what happened.
    """

    def __init__(self) -> None:
        self._parser: Parser | None = None
        self.status = "waiting for the first valid packet"

    @property
    def name(self) -> str:
        return self._parser.name if self._parser is not None else "auto"

    @property
    def detected(self) -> str | None:
        return None if self._parser is None else self._parser.name

    def parse(self, datagram: bytes) -> list[SensorReading]:
        if self._parser is not None:
            return self._parser.parse(datagram)
        _check_size(datagram)
        head = bytes(datagram[:8]).lstrip()
        candidate: Parser
        if head.startswith(b"{"):
            candidate = SensaGramParser()
        elif head.startswith((b"/", b"#bundle")):
            candidate = Sensors2OscParser()
        else:
            candidate = SensorstreamParser()
            try:
                readings = candidate.parse(datagram)
            except MalformedPacket as exc:
                if exc.reason not in _NOT_SENSORSTREAM_CSV:
                    raise
                if self.status != HYPERIMU_NEEDS_ORDER:
                    self.status = HYPERIMU_NEEDS_ORDER
                    log.warning("phone format: %s (%s)", HYPERIMU_NEEDS_ORDER, exc)
                raise MalformedPacket(HYPERIMU_NEEDS_ORDER, exc.reason) from None
            return self._lock(candidate, readings)
        return self._lock(candidate, candidate.parse(datagram))

    def _lock(self, parser: Parser, readings: list[SensorReading]) -> list[SensorReading]:
        self._parser = parser
        self.status = f"detected {parser.name}"
        log.info("phone format detected: %s", parser.name)
        return readings


# ----------------------------------------------------------------------------- CLI specs

FORMAT_SPECS = (
    "sensagram",
    "sensorstream",
    "sensorstream:legacy",
    "hyperimu:<sensor>,<sensor>...[;terminator=#][;gps=N]",
    "sensors2osc[:<address>=<kind>,...]",
    "auto",
)


def make_parser(spec: str) -> Parser:
    """The parser for a ``--phone-format`` string; ``ValueError`` naming the valid forms."""
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name == "auto" and not arg:
        return AutoDetect()
    if name == "sensagram" and not arg:
        return SensaGramParser()
    if name == "sensorstream" and arg in ("", "legacy"):
        if arg:
            return SensorstreamParser(SENSORSTREAM_LEGACY_IDS, name="sensorstream:legacy")
        return SensorstreamParser()
    if name == "hyperimu":
        order, *options = arg.split(";")
        kwargs: dict[str, Any] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key == "terminator" and value:
                kwargs["terminator"] = value.replace("\\r", "\r").replace("\\n", "\n")
            elif key == "gps" and value.isdigit():
                kwargs["gps_values"] = int(value)
            else:
                raise ValueError(f"bad hyperimu option {option!r}: use terminator=<str> or gps=<n>")
        return HyperImuParser([s.strip() for s in order.split(",") if s.strip()], **kwargs)
    if name == "sensors2osc":
        overrides = {}
        for item in filter(None, (s.strip() for s in arg.split(","))):
            address, sep, kind = item.partition("=")
            if not sep or not address.startswith("/"):
                raise ValueError(f"bad sensors2osc override {item!r}: use /address=kind")
            overrides[address] = kind
        return Sensors2OscParser(overrides)
    raise ValueError(f"unknown phone format {spec!r}; use one of: {', '.join(FORMAT_SPECS)}")
