"""A simulated phone: real datagrams in each app's format, sent over real UDP.

The simulated robot, the tests and the benchmarks use this to exercise the daemon's
phone path end to end. The encoders are written from the app descriptions
(``docs/phone.md``) independently of the daemon's parsers (``robotd/phone/formats.py``),
so each checks the other; ``sim`` must not import ``robotd``.

Frames and units are Android's: phone frame x right, y up the screen, z out of the
screen; accelerometer m/s^2 including gravity (reads +g upwards at rest), gyroscope rad/s,
rotation vector = phone->world (ENU) quaternion as x,y,z,w.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from sim.sensor_values import float32_text

STANDARD_GRAVITY_M_S2 = 9.80665
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class PhoneSample:
    """What the phone measures at one instant (phone clock, phone frame)."""

    phone_time_s: float
    accel_m_s2: Vec3
    gyro_rad_s: Vec3
    rotation_vector_xyzw: tuple[float, float, float, float] | None = None
    mag_ut: Vec3 | None = None


def phone_sample(
    phone_time_s: float,
    torso_quat_wxyz: Sequence[float],
    torso_gyro_rad_s: Sequence[float],
    phone_to_torso: np.ndarray,
    *,
    torso_accel_world_m_s2: Sequence[float] = (0.0, 0.0, 0.0),
    rotation_vector: bool = True,
) -> PhoneSample:
    """The reading of a phone strapped to a torso with the given orientation and motion.

    ``torso_quat_wxyz`` is torso->world, ``phone_to_torso`` the calibrated mount (phone-frame
    vectors -> torso-frame vectors). The accelerometer measures specific force:
    ``accel + g * up`` in world, expressed in the phone frame.
    """
    torso_to_world = Rotation.from_quat(np.asarray(torso_quat_wxyz, dtype=float), scalar_first=True)
    phone_to_world = torso_to_world * Rotation.from_matrix(phone_to_torso)
    specific_force_world = np.asarray(torso_accel_world_m_s2, dtype=float) + (0.0, 0.0, STANDARD_GRAVITY_M_S2)
    accel = phone_to_world.inv().apply(specific_force_world)
    gyro = np.asarray(phone_to_torso, dtype=float).T @ np.asarray(torso_gyro_rad_s, dtype=float)
    rv = None
    if rotation_vector:
        x, y, z, w = phone_to_world.as_quat(canonical=True)  # canonical: w >= 0, as Android keeps it
        rv = (float(x), float(y), float(z), float(w))
    return PhoneSample(
        phone_time_s=float(phone_time_s),
        accel_m_s2=tuple(float(v) for v in accel),  # type: ignore[arg-type]
        gyro_rad_s=tuple(float(v) for v in gyro),  # type: ignore[arg-type]
        rotation_vector_xyzw=rv,
    )


def swaying_torso(phone_to_torso: np.ndarray, *, pitch0_rad: float = 0.0, amplitude_rad: float = 0.15,
                  frequency_hz: float = 0.5) -> Callable[[float], PhoneSample]:
    """``phone_time_s -> PhoneSample`` of a torso pitching sinusoidally about ``pitch0_rad``.

    The standard live stream of tests and benchmarks: enough motion that a balance policy
    keeps moving the legs, with a gyro that matches the orientation's derivative.
    """
    omega = 2.0 * math.pi * frequency_hz

    def sample_at(t: float) -> PhoneSample:
        pitch = pitch0_rad + amplitude_rad * math.sin(omega * t)
        rate = amplitude_rad * omega * math.cos(omega * t)
        return phone_sample(t, (math.cos(pitch / 2), 0.0, math.sin(pitch / 2), 0.0), (0.0, rate, 0.0), phone_to_torso)
    return sample_at


# ----------------------------------------------------------------------------- encoders
# Each encoder turns one sample into the datagrams the app would send for it.


def encode_sensagram(sample: PhoneSample) -> list[bytes]:
    """One JSON datagram per sensor event, values at float32 precision; keys deliberately not in
    the documented order."""
    timestamp_ns = int(round(sample.phone_time_s * 1e9))
    events = [("android.sensor.accelerometer", sample.accel_m_s2), ("android.sensor.gyroscope", sample.gyro_rad_s)]
    if sample.mag_ut is not None:
        events.append(("android.sensor.magnetic_field", sample.mag_ut))
    if sample.rotation_vector_xyzw is not None:
        # Android adds the estimated heading accuracy (rad) as a fifth value.
        events.append(("android.sensor.rotation_vector", (*sample.rotation_vector_xyzw, 0.1)))
    return [
        json.dumps({"values": [float32_text(v) for v in values], "timestamp": timestamp_ns, "type": sensor_type}).encode()
        for sensor_type, values in events
    ]


def encode_sensorstream(sample: PhoneSample, *, quaternion_id: bool = False) -> list[bytes]:
    """``t, 3, a, 4, g[, 5, m][, 84, rv xyz | 86, q wxyz]`` in the app's spacing and precision."""

    def fields(values: Sequence[float]) -> str:
        return ",".join(f"{v:7.3f}" for v in values)

    parts = [f"{sample.phone_time_s:.5f}", f" 3,{fields(sample.accel_m_s2)}", f" 4,{fields(sample.gyro_rad_s)}"]
    if sample.mag_ut is not None:
        parts.append(f" 5,{fields(sample.mag_ut)}")
    if sample.rotation_vector_xyzw is not None:
        x, y, z, w = sample.rotation_vector_xyzw
        if quaternion_id:
            parts.append(f" 86,{fields((w, x, y, z))}")
        else:
            parts.append(f" 84,{fields((x, y, z))}")
    return [",".join(parts).encode()]


def encode_hyperimu(
    sample: PhoneSample,
    *,
    order: Sequence[str] = ("accel", "gyro"),
    timestamp: bool = True,
    mac: str | None = None,
    gps: Vec3 | None = None,
    terminator: str = "\r\n",
) -> list[bytes]:
    """``[ms,][mac,]v,v,v,...[,lat,lon,alt]<terminator>``, three values per sensor in ``order``."""
    sensors = {"accel": sample.accel_m_s2, "gyro": sample.gyro_rad_s, "mag": sample.mag_ut}
    fields: list[str] = []
    if timestamp:
        fields.append(str(int(round(sample.phone_time_s * 1e3))))
    if mac is not None:
        fields.append(mac)
    for name in order:
        values = sensors[name]
        if values is None:
            raise ValueError(f"sample has no {name}")
        fields.extend(f"{v:.6f}" for v in values)
    if gps is not None:
        fields.extend(f"{v:.7f}" for v in gps)
    return [(",".join(fields) + terminator).encode()]


def _osc_string(text: str) -> bytes:
    raw = text.encode("ascii") + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def osc_message(address: str, values: Sequence[float]) -> bytes:
    """One OSC message with float32 arguments."""
    return _osc_string(address) + _osc_string("," + "f" * len(values)) + struct.pack(f">{len(values)}f", *values)


def osc_bundle(messages: Sequence[bytes]) -> bytes:
    """An OSC bundle with the "immediately" time tag."""
    return b"#bundle\0" + struct.pack(">Q", 1) + b"".join(struct.pack(">i", len(m)) + m for m in messages)


def encode_sensors2osc(sample: PhoneSample, *, bundle: bool = False) -> list[bytes]:
    """One OSC message per sensor (no timestamp, as the app sends), or all in one bundle."""
    messages = [osc_message("/accelerometer", sample.accel_m_s2), osc_message("/gyroscope", sample.gyro_rad_s)]
    if sample.mag_ut is not None:
        messages.append(osc_message("/magneticfield", sample.mag_ut))
    if sample.rotation_vector_xyzw is not None:
        messages.append(osc_message("/rotationvector", sample.rotation_vector_xyzw))
    return [osc_bundle(messages)] if bundle else messages


Encoder = Callable[[PhoneSample], list[bytes]]
#: Encoders by the daemon's ``--phone-format`` name (HyperIMU as ``hyperimu:acc,gyro``).
ENCODERS: dict[str, Encoder] = {
    "sensagram": encode_sensagram,
    "sensorstream": encode_sensorstream,
    "hyperimu:acc,gyro": encode_hyperimu,
    "sensors2osc": encode_sensors2osc,
}


# ----------------------------------------------------------------------------- streamer


class PhoneStreamer:
    """Sends encoded samples over real UDP, optionally paced at a fixed rate in a thread.

    ``source_host`` binds the sending socket (e.g. 127.0.0.2 to play a foreign sender on
    the Linux loopback); the receiver sees that address as the sender.
    """

    def __init__(
        self,
        target: tuple[str, int],
        encode: Encoder | str = "sensagram",
        *,
        rate_hz: float = 100.0,
        source_host: str = "",
    ):
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.target = target
        self.encode: Encoder = ENCODERS[encode] if isinstance(encode, str) else encode
        self.rate_hz = rate_hz
        self.sent_datagrams = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((source_host, 0))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, sample: PhoneSample) -> int:
        """Send one sample's datagrams now; returns how many."""
        datagrams = self.encode(sample)
        for datagram in datagrams:
            self.send_raw(datagram)
        return len(datagrams)

    def send_raw(self, datagram: bytes) -> None:
        """Send arbitrary bytes (malformed-input tests)."""
        self._sock.sendto(datagram, self.target)
        self.sent_datagrams += 1

    def run(self, sample_at: Callable[[float], PhoneSample], duration_s: float) -> int:
        """Send ``sample_at(phone_time_s)`` at ``rate_hz`` for ``duration_s`` (absolute deadlines).

        The phone clock starts at the call and stamps each sample when it is actually
        taken, as a phone's sensor does: if this thread runs late, the receiver should not
        see the delay as network latency. Returns the number of samples sent.
        """
        period_s = 1.0 / self.rate_hz
        start = time.monotonic()
        n = 0
        while not self._stop.is_set() and n * period_s < duration_s:
            delay = start + n * period_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send(sample_at(time.monotonic() - start))
            n += 1
        return n

    def start(self, sample_at: Callable[[float], PhoneSample], duration_s: float = float("inf")) -> None:
        """:meth:`run` in a background thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(sample_at, duration_s), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._sock.close()

    def __enter__(self) -> "PhoneStreamer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
