"""Malformed phone datagrams for each supported format: mutations of valid packets plus
format-aware corruptions (wrong types, special numbers, truncations, deep nesting, bogus OSC
sizes) and plain noise. Deterministic for a given seed.

Valid packets come from the simulated phone's encoders (``sim/phone_stream.py``), which are
written independently of the daemon's parsers. Some mutants are still valid packets (a
flipped digit in a value); the test accounts for every datagram either way.
"""

from __future__ import annotations

import math
import random
import re
import struct
import zlib
from typing import Callable, Iterator

import numpy as np

from calibration import load_calibration
from sim.phone_stream import ENCODERS, osc_bundle, osc_message, phone_sample

#: ``--phone-format`` values the fuzzer covers, each with its encoder.
FORMATS = ("sensagram", "sensorstream", "hyperimu:acc,gyro", "sensors2osc")

SPECIAL_NUMBERS = [b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e309", b"-1e309", b"1e-400", b"", b"-", b".",
                   b"0x1f", b"1_000", b"9" * 400, b"-0", b"1e", b"+-1", b"true", b"null", b"\x00", b"\xff\xfe",
                   b"1,2", b"\"1\"", b"[]", b"{}"]
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def valid_packets(fmt: str, seed: int, n: int = 64) -> list[bytes]:
    """``n`` samples' worth of valid datagrams in ``fmt`` (random orientations and motion)."""
    rng = np.random.default_rng(seed)
    mount = load_calibration().phone_to_torso
    encode = ENCODERS[fmt]
    out: list[bytes] = []
    for i in range(n):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        sample = phone_sample(1.0 + i * 0.01, q, rng.normal(size=3), mount, torso_accel_world_m_s2=rng.normal(size=3))
        out.extend(encode(sample))
    if fmt == "sensors2osc":
        out.append(osc_bundle(out[:4]))
    return out


def _bitflip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16):]


def _replace_byte(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.choice(b",[]{}\":;#/\x00\n\r \t-+.eE0123456789")
    return bytes(b)


def _special_number(rng: random.Random, data: bytes) -> bytes:
    spans = [m.span() for m in _NUMBER.finditer(data)]
    if not spans:
        return data + rng.choice(SPECIAL_NUMBERS)
    out = data
    for start, end in sorted(rng.sample(spans, min(len(spans), rng.randint(1, 3))), reverse=True):
        out = out[:start] + rng.choice(SPECIAL_NUMBERS) + out[end:]
    return out


def _duplicate_segment(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = rng.randint(i, len(data))
    return data[:j] + data[i:j] * rng.randint(2, 50) + data[j:]


def _noise(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 2, 3, 4, 7, 8, 16, 64, 512, 1400)))


def _field_count(rng: random.Random, data: bytes) -> bytes:
    """Too few or too many comma/space separated fields (the CSV formats' main failure)."""
    parts = data.split(b",")
    if rng.random() < 0.5 and len(parts) > 1:
        del parts[rng.randrange(len(parts)):]
    else:
        parts += [rng.choice(SPECIAL_NUMBERS + [b"1.0", b"3", b"4", b"84", b"86"]) for _ in range(rng.randint(1, 40))]
    return b",".join(parts)


def _json_structure(rng: random.Random, data: bytes) -> bytes:
    choices = [
        b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": "x"}',
        b'{"type": "android.sensor.gyroscope", "timestamp": "1", "values": [1, 2, 3]}',
        b'{"type": 7, "timestamp": 1, "values": [1, 2, 3]}',
        b'{"type": "android.sensor.rotation_vector", "timestamp": 5, "values": [0, 0, 0, 0]}',
        b'{"type": "android.sensor.rotation_vector", "timestamp": 5, "values": [9, 9, 9, 9]}',
        b'{"type": "android.sensor.accelerometer", "timestamp": -5, "values": [1e308, 1e308, 1e308]}',
        b'{"type": "android.sensor.accelerometer", "timestamp": 1e400, "values": [1, 2, 3]}',
        b'{"type": "android.sensor.accelerometer", "timestamp": 99999999999999999999999999, "values": [1, 2, 3]}',
        b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": [[1], [2], [3]]}',
        b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": [true, false, null]}',
        b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": {"a": 1}}',
        b'{"type": "android.sensor.accelerometer", "timestamp": 1}',
        b'{"type": "android.sensor.light", "timestamp": 1, "values": [1]}',
        b"[]", b"null", b"1", b'"string"', b"{}", b'{"values": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        b'{"type": "android.sensor.accelerometer", "type": "x", "timestamp": 1, "values": [1, 2, 3]}',
    ]
    return rng.choice(choices)


def _osc_structure(rng: random.Random, data: bytes) -> bytes:
    choices = [
        osc_message("/accelerometer", (1.0, 2.0)),
        osc_message("/accelerometer", (math.nan, math.inf, -math.inf)),
        osc_message("/gyroscope", (1e38, -1e38, 3.4e38)),
        osc_message("/rotationvector", (0.0, 0.0, 0.0, 0.0)),
        osc_message("/rotationvector", (2.0, 2.0, 2.0, 2.0)),
        b"/accelerometer\0\0,iii\0\0\0\0" + struct.pack(">3i", 1, 2, 3),
        b"/accelerometer\0\0,sss\0\0\0\0abc\0def\0ghi\0",
        b"/accelerometer\0\0,fff\0\0\0\0" + b"\0\0",
        b"/accelerometer\0\0,bfff\0\0\0" + struct.pack(">i", 2 ** 31 - 1),
        b"/accelerometer",
        b"/\0\0\0,\0\0\0",
        b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", 2 ** 31 - 1) + b"abc",
        b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", -8) + b"abcdefgh",
        b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", 0),
        b"#bundle\0",
        b"#bundle\0" + struct.pack(">Q", 1) + b"".join(
            struct.pack(">i", 16 + 12 * k) for k in range(1)) * 1,
    ]
    # nested bundles, 300 deep
    inner = osc_message("/accelerometer", (0.0, 0.0, 9.8))
    for _ in range(300):
        inner = osc_bundle([inner])
    choices.append(inner)
    return rng.choice(choices)


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _bitflip, _truncate, _insert, _delete, _replace_byte, _special_number, _duplicate_segment, _noise, _field_count,
]


def corpus_seed(fmt: str) -> int:
    """The fuzz corpus seed of one format: the same in every process and on every machine
    (``hash(str)`` is randomised per process, so a failing corpus could not be re-run)."""
    return zlib.crc32(fmt.encode()) & 0xFFFF


def malformed(fmt: str, seed: int, count: int) -> Iterator[bytes]:
    """``count`` mutated datagrams for ``fmt``; 1 to 3 mutations stacked on a valid packet."""
    rng = random.Random(seed)
    base = valid_packets(fmt, seed)
    structural = _osc_structure if fmt == "sensors2osc" else _json_structure if fmt == "sensagram" else None
    for _ in range(count):
        roll = rng.random()
        if structural is not None and roll < 0.1:
            data = structural(rng, b"")
        else:
            data = rng.choice(base)
            for _ in range(rng.randint(1, 3)):
                data = rng.choice(MUTATORS)(rng, data)
        yield data[:65507]  # the largest UDP payload over IPv4
