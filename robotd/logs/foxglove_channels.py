"""A run's latency-log records as Foxglove channels: one mapping for the MCAP export and the live stream.

``robotd replay LOG --mcap OUT`` (:mod:`robotd.logs.mcap_export`) and ``robotd run --foxglove``
(:mod:`robotd.logs.foxglove_live`) both hand each record (a loop, event or summary line, as the
daemon writes it) to :meth:`RunChannels.publish`; the channels are bound to a
``foxglove.Context`` whose sink is an MCAP file or a WebSocket server. Well-known Foxglove
schemas (protobuf) where one fits, JSON with a JSON schema otherwise:

============================  ====================  ===========================================
topic                         schema                content
============================  ====================  ===========================================
``/tf``                       foxglove.FrameTransform  ``world`` -> ``torso``: the torso orientation
``/torso/pose``               foxglove.PoseInFrame  the same as a pose in ``world``
``/torso/gyro``               foxglove.Vector3      torso gyro, rad/s
``/torso/tilt``               robotd.Tilt (JSON)    pitch, roll, tilt in degrees
``/loop/latency_us``          robotd.Latency        the six stages, ``tick``, ``rx_to_tx`` (µs)
``/loop/timing``              robotd.Timing         seq, loop clock, lateness, packet age, mode...
``/policy/action``            robotd.Action         action in [-1, 1] per controlled joint
``/joints/targets``           foxglove.JointStates  joint targets (rad) before safety
``/servo/pulses_us``          robotd.Pulses         pulses sent this tick, by joint
``/events``                   foxglove.Log          events, mode changes, the summary
============================  ====================  ===========================================

Message times are the loop's: a record's monotonic ``t`` mapped to Unix time with the header's
``started_unix``/``started_monotonic`` pair (:class:`ClockMap`); ``/loop/timing`` also carries
the monotonic value itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import foxglove
import numpy as np
from foxglove import channels, messages

from robotd.logs.logread import STAGES
from sim.observation import gravity_in_torso, pitch_roll_rad, tilt_rad

TOPICS: tuple[str, ...] = ("/tf", "/torso/pose", "/torso/gyro", "/torso/tilt", "/loop/latency_us", "/loop/timing",
                           "/policy/action", "/joints/targets", "/servo/pulses_us", "/events")
WARNING_EVENTS = frozenset({"fall", "serial_lost", "stale", "policy_error", "policy_output_refused",
                            "log_error", "signal"})
"""Events logged at level Warning (the rest are Info)."""


@dataclass(frozen=True)
class ClockMap:
    """Loop monotonic seconds -> Unix nanoseconds, from one pair of readings of both clocks."""

    unix_s: float
    monotonic_s: float

    @classmethod
    def from_header(cls, header: Mapping[str, Any], first_t_s: float | None) -> "ClockMap":
        unix = header.get("started_unix")
        mono = header.get("started_monotonic")
        if isinstance(unix, (int, float)) and isinstance(mono, (int, float)):
            return cls(float(unix), float(mono))
        # A log from before the header had started_monotonic: its first tick at started_unix.
        return cls(float(unix) if isinstance(unix, (int, float)) else 0.0, first_t_s or 0.0)

    def unix_ns(self, t_s: float) -> int:
        return max(0, int(round((self.unix_s + (t_s - self.monotonic_s)) * 1e9)))


def _json_schema(name: str, properties: dict[str, Any]) -> foxglove.Schema:
    body = {"title": name, "type": "object", "properties": properties}
    return foxglove.Schema(name=name, encoding="jsonschema", data=json.dumps(body).encode())


_NUMBER = {"type": ["number", "null"]}


def _num(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; a log may hold null or garbage)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _vector(value: Any, width: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.asarray(value, dtype=np.float64).reshape(width)
    except (TypeError, ValueError):
        return None
    return out if np.all(np.isfinite(out)) else None


def _floats(value: Any) -> list[float | None]:
    if value is None:
        return []
    try:
        return [_num(v) for v in np.asarray(value, dtype=np.float64).ravel().tolist()]
    except (TypeError, ValueError):
        return []


class RunChannels:
    """The run's channels on ``context``; :meth:`publish` sends one record's messages."""

    def __init__(self, context: foxglove.Context, header: Mapping[str, Any], clock: ClockMap):
        self.clock = clock
        joint_names = header.get("joint_names")
        self.joint_names: list[str] = [str(j) for j in joint_names] if isinstance(joint_names, list) else []
        observation = header.get("observation")
        controlled = observation.get("controlled_joints") if isinstance(observation, dict) else None
        self.controlled: list[str] = [str(j) for j in controlled] if isinstance(controlled, list) else []
        chans = header.get("channels")
        self.joint_of_channel: dict[str, str] = (
            {str(c): j for c, j in zip(chans, self.joint_names)} if isinstance(chans, list) else {})
        self._mode: str | None = None
        self._last_t = clock.monotonic_s
        self.messages = 0
        ctx = {"context": context}
        self.tf = channels.FrameTransformChannel("/tf", **ctx)
        self.pose = channels.PoseInFrameChannel("/torso/pose", **ctx)
        self.gyro = channels.Vector3Channel("/torso/gyro", **ctx)
        self.tilt = foxglove.Channel("/torso/tilt", schema=_json_schema("robotd.Tilt", {
            k: _NUMBER for k in ("pitch_deg", "roll_deg", "tilt_deg")}), message_encoding="json", **ctx)
        self.latency = foxglove.Channel("/loop/latency_us", schema=_json_schema("robotd.Latency", {
            k: _NUMBER for k in (*STAGES, "tick", "rx_to_tx")}), message_encoding="json", **ctx)
        self.timing = foxglove.Channel("/loop/timing", schema=_json_schema("robotd.Timing", {
            "seq": {"type": "integer"}, "t_monotonic_s": {"type": "number"}, "lateness_ms": _NUMBER,
            "pkt_age_ms": _NUMBER, "bytes": _NUMBER, "n_rx": {"type": "integer"}, "mode": {"type": "string"},
            "flags": {"type": "array", "items": {"type": "string"}}}), message_encoding="json", **ctx)
        self.action = foxglove.Channel("/policy/action", schema=_json_schema("robotd.Action", {
            j: _NUMBER for j in self.controlled}), message_encoding="json", **ctx)
        self.targets = channels.JointStatesChannel("/joints/targets", **ctx)
        self.pulses = foxglove.Channel("/servo/pulses_us", schema=_json_schema("robotd.Pulses", {
            j: _NUMBER for j in self.joint_names}), message_encoding="json", **ctx)
        self.log = channels.LogChannel("/events", **ctx)
        self.all = (self.tf, self.pose, self.gyro, self.tilt, self.latency, self.timing, self.action, self.targets,
                    self.pulses, self.log)

    def subscribed(self) -> bool:
        """Whether any sink (an MCAP file, a subscribed viewer) takes any of the channels."""
        return any(ch.has_sinks() for ch in self.all)

    def publish(self, record: Mapping[str, Any]) -> None:
        """Send the messages of one log record (loop, event or summary line); others are ignored."""
        kind = record.get("type")
        if kind == "loop":
            self._loop(record)
        elif kind == "event":
            t = _num(record.get("t"))
            if t is not None:
                details = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("type", "t", "event"))
                name = str(record.get("event"))
                self._log(t, f"{name} {details}".rstrip(),
                          messages.LogLevel.Warning if name in WARNING_EVENTS else messages.LogLevel.Info)
        elif kind == "summary":
            t = _num(record.get("t"))
            summary = {k: v for k, v in record.items() if k != "type"}
            self._log(t if t is not None else self._last_t, "summary " + json.dumps(summary), messages.LogLevel.Info)

    def _loop(self, rec: Mapping[str, Any]) -> None:
        t = _num(rec.get("t"))
        if t is None:
            return
        self._last_t = t
        ns = self.clock.unix_ns(t)
        stamp = messages.Timestamp(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000)
        mode = rec.get("mode") if isinstance(rec.get("mode"), str) else "unknown"
        if mode != self._mode:
            self._log(t, f"mode {self._mode or '-'} -> {mode}", messages.LogLevel.Info)
            self._mode = mode
        quat = _vector(rec.get("quat"), 4)
        if quat is not None:
            w, x, y, z = quat.tolist()
            rotation = messages.Quaternion(x=x, y=y, z=z, w=w)
            self._send(self.tf, messages.FrameTransform(timestamp=stamp, parent_frame_id="world", child_frame_id="torso",
                                                        translation=messages.Vector3(x=0.0, y=0.0, z=0.0),
                                                        rotation=rotation), ns)
            self._send(self.pose, messages.PoseInFrame(timestamp=stamp, frame_id="world", pose=messages.Pose(
                position=messages.Vector3(x=0.0, y=0.0, z=0.0), orientation=rotation)), ns)
            gravity = gravity_in_torso(quat)
            pitch, roll = pitch_roll_rad(gravity)
            self._send(self.tilt, {"pitch_deg": math.degrees(pitch), "roll_deg": math.degrees(roll),
                                   "tilt_deg": math.degrees(tilt_rad(gravity))}, ns)
        gyro = _vector(rec.get("gyro"), 3)
        if gyro is not None:
            gx, gy, gz = gyro.tolist()
            self._send(self.gyro, messages.Vector3(x=gx, y=gy, z=gz), ns)
        stages = rec.get("stages_us") if isinstance(rec.get("stages_us"), dict) else {}
        self._send(self.latency, {**{s: _num(stages.get(s)) for s in STAGES}, "tick": _num(rec.get("tick_us")),
                                  "rx_to_tx": _num(rec.get("rx_to_tx_us"))}, ns)
        deadline = _num(rec.get("deadline"))
        flags = rec.get("flags")
        rx = rec.get("rx")
        self._send(self.timing, {
            "seq": rec.get("seq"), "t_monotonic_s": t,
            "lateness_ms": None if deadline is None else (t - deadline) * 1e3,
            "pkt_age_ms": _num(rec.get("pkt_age_ms")), "bytes": _num(rec.get("bytes")),
            "n_rx": len(rx) if isinstance(rx, list) else 0, "mode": mode,
            "flags": [f for f in flags if isinstance(f, str)] if isinstance(flags, list) else []}, ns)
        action = _floats(rec.get("action"))
        if action:
            names = self.controlled if len(self.controlled) == len(action) else [f"a{i}" for i in range(len(action))]
            self._send(self.action, dict(zip(names, action)), ns)
        targets = _floats(rec.get("targets_rad"))
        if targets:
            names = self.joint_names if len(self.joint_names) == len(targets) else [f"j{i}" for i in range(len(targets))]
            self._send(self.targets, messages.JointStates(timestamp=stamp, joints=[
                messages.JointState(name=n, position=p if p is not None else math.nan) for n, p in zip(names, targets)]),
                ns)
        pulses = rec.get("pulses_us")
        if isinstance(pulses, dict) and pulses:
            self._send(self.pulses, {self.joint_of_channel.get(str(c), f"ch{c}"): _num(p) for c, p in pulses.items()},
                       ns)

    def _log(self, t_s: float, text: str, level: Any) -> None:
        ns = self.clock.unix_ns(t_s)
        self._send(self.log, messages.Log(timestamp=messages.Timestamp(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000),
                                          level=level, message=text, name="robotd"), ns)

    def _send(self, channel: Any, message: Any, ns: int) -> None:
        channel.log(message, log_time=ns)
        self.messages += 1

    @staticmethod
    def metadata(header: Mapping[str, Any]) -> dict[str, str]:
        """The run header as MCAP metadata (string values; nested ones as JSON)."""
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in header.items()}
