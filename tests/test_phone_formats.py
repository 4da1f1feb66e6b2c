"""Phone app formats: realistic samples, encoder round trips, auto-detection, fuzzing."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from calibration import load_calibration
from robotd.phone.formats import (
    HYPERIMU_NEEDS_ORDER,
    MAX_DATAGRAM_BYTES,
    SENSORSTREAM_LEGACY_IDS,
    AutoDetect,
    HyperImuParser,
    MalformedPacket,
    SensaGramParser,
    Sensors2OscParser,
    SensorReading,
    SensorstreamParser,
    make_parser,
)
from sim.phone_stream import ENCODERS, encode_hyperimu, encode_sensorstream, encode_sensors2osc, phone_sample

SENSAGRAM_GYRO = b'{"type": "android.sensor.gyroscope", "timestamp": 5123400012345, "values": [0.01, -0.02, 0.003]}'
SENSORSTREAM = b"1021.33410, 3, 0.100,9.790,0.310, 4, 0.002,-0.011,0.020"
HYPERIMU = b"0.212,9.701,0.551,0.003,-0.010,0.001\r\n"


def osc(address: str, *values: float, tag: str = "f") -> bytes:
    builder = OscMessageBuilder(address)
    for v in values:
        builder.add_arg(v, tag)
    return builder.build().dgram


def rejects(parser, datagram: bytes) -> str:
    with pytest.raises(MalformedPacket) as info:
        parser.parse(datagram)
    return info.value.reason


def close(values, expected, tol=1e-6) -> bool:
    return len(values) == len(expected) and all(abs(a - b) <= tol for a, b in zip(values, expected))


# ----------------------------------------------------------------------------- SensaGram


def test_sensagram_reference_sample():
    [r] = SensaGramParser().parse(SENSAGRAM_GYRO)
    assert r.kind == "gyro" and r.values == (0.01, -0.02, 0.003)
    assert r.phone_time_s == pytest.approx(5123.400012345)


def test_sensagram_key_order_unknown_sensor_and_rotation_vector():
    p = SensaGramParser()
    [r] = p.parse(b'{"values":[0.1,0.2,0.3,0.927,0.05],"timestamp":1,"type":"android.sensor.rotation_vector"}')
    assert r.kind == "rotation_vector" and len(r.values) == 5
    assert p.parse(b'{"type":"android.sensor.light","timestamp":1,"values":[120.0]}') == []


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b'{"type":"android.sensor.accelerometer","timestamp":1,"values":[NaN,1,2]}', "non-finite or out-of-range value"),
        (b'{"type":"android.sensor.accelerometer","timestamp":1,"values":[1e999,1,2]}', "non-finite or out-of-range value"),
        (b'{"type":"android.sensor.accelerometer","timestamp":1,"values":[1,2]}', "wrong value count"),
        (b'{"type":"android.sensor.accelerometer","timestamp":1,"values":["1",2,3]}', "wrong type"),
        (b'{"type":"android.sensor.accelerometer","timestamp":true,"values":[1,2,3]}', "wrong type"),
        (b'{"type":"android.sensor.accelerometer","timestamp":-5,"values":[1,2,3]}', "bad timestamp"),
        (b'{"type":7,"timestamp":1,"values":[1,2,3]}', "missing sensor type"),
        (b'[1,2,3]', "not a json object"),
        (b'{"type":', "not json"),
        (b'\xff\xfe{}', "bad utf-8"),
        (b"", "empty datagram"),
        (b"[" * 3000, "not json"),
        (b'{"type":"android.sensor.rotation_vector","timestamp":1,"values":[0.9,0.9,0.9]}', "rotation vector not unit"),
    ],
)
def test_sensagram_rejects(datagram, reason):
    assert rejects(SensaGramParser(), datagram) == reason


def test_giant_datagrams_rejected_early_by_every_parser():
    giant = b"{" + b" " * MAX_DATAGRAM_BYTES + b"}"
    for spec in ("sensagram", "sensorstream", "hyperimu:acc", "sensors2osc", "auto"):
        assert rejects(make_parser(spec), giant) == "datagram too large"


# ----------------------------------------------------------------------------- Sensorstream


def test_sensorstream_reference_sample_and_spacing():
    p = SensorstreamParser()
    accel, gyro = p.parse(SENSORSTREAM)
    assert (accel.kind, accel.values, accel.phone_time_s) == ("accel", (0.1, 9.79, 0.31), 1021.3341)
    assert gyro.kind == "gyro" and gyro.values == (0.002, -0.011, 0.02)
    assert p.parse(b"1021.33410,3,0.100,9.790,0.310,4,  0.002, -0.011,   0.020") == [accel, gyro]


def test_sensorstream_skips_gps_and_orientation_keeps_rotation_quaternion():
    packet = (
        b"890.71558, 1, 48.1, 11.5, 520.0, 3, 0.076, 9.809, 0.565, 4, -0.559, 0.032, -0.134,"
        b" 5, -21.660,-36.960,-28.140, 81, 10.0, 20.0, 30.0, 84, 0.1, 0.2, 0.3,"
        b" 85, 1,0,0, 0,1,0, 0,0,1, 86, 1.0, 0.0, 0.0, 0.0"
    )
    kinds = [r.kind for r in SensorstreamParser().parse(packet)]
    assert kinds == ["accel", "gyro", "mag", "rotation_vector", "quaternion"]


def test_sensorstream_85_86_ambiguity_rejected_not_guessed():
    old_app = b"100.00000, 3, 0.1, 9.8, 0.3, 4, 0.0, 0.0, 0.0, 85, 1013.250, 86, 31"
    assert rejects(SensorstreamParser(), old_app) == "length inconsistent with id table"
    legacy = SensorstreamParser(SENSORSTREAM_LEGACY_IDS)
    assert [r.kind for r in legacy.parse(old_app)] == ["accel", "gyro"]
    assert make_parser("sensorstream:legacy").name == "sensorstream:legacy"
    # A new-app quaternion packet under the legacy table leaves values over: rejected too.
    assert rejects(legacy, b"100.0, 3, 0.1, 9.8, 0.3, 86, 1.0, 0.0, 0.0, 0.0") == "bad sensor id"


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"100.0, 2, 0.1, 0.2, 0.3", "unknown sensor id"),
        (b"100.0, 3, 0.1, 0.2", "length inconsistent with id table"),
        (b"100.0, 3, 0.1, 0.2, 0.3, 3, 0.1, 0.2, 0.3", "repeated sensor id"),
        (b"100.0, 3, 0.1, nan, 0.3", "non-finite or out-of-range value"),
        (b"100.0, 3, 0.1, inf, 0.3", "non-finite or out-of-range value"),
        (b"100.0, 3, 0.1, 1_0, 0.3", "bad number"),
        (b"100.0, 3.0, 0.1, 0.2, 0.3", "bad sensor id"),
        (b"100.0", "no sensor data"),
        (b"abc, 3, 0.1, 0.2, 0.3", "bad number"),
        (b"100.0, 3, 0.1, 0.2, 0.3,", "bad sensor id"),
        (b"100.0, 3, 0.1, 2e5, 0.3", "non-finite or out-of-range value"),
    ],
)
def test_sensorstream_rejects(datagram, reason):
    assert rejects(SensorstreamParser(), datagram) == reason


def test_sensorstream_table_is_validated():
    with pytest.raises(ValueError):
        SensorstreamParser({3: ("accel", 4)})


# ----------------------------------------------------------------------------- HyperIMU


def test_hyperimu_reference_sample():
    accel, gyro = make_parser("hyperimu:acc,gyro").parse(HYPERIMU)
    assert accel == SensorReading("accel", (0.212, 9.701, 0.551), None)
    assert gyro == SensorReading("gyro", (0.003, -0.010, 0.001), None)


def test_hyperimu_timestamp_mac_gps_nmea_and_hash_terminator():
    p = make_parser("hyperimu:acc,gyro")
    values = "0.212,9.701,0.551,0.003,-0.010,0.001"
    [a, _] = p.parse(f"1712345678901,{values}\r\n".encode())
    assert a.phone_time_s == pytest.approx(1712345678.901)
    [a, _] = p.parse(f"1712345678901,AA:BB:CC:DD:EE:FF,{values}\r\n".encode())
    assert a.phone_time_s == pytest.approx(1712345678.901)
    [a, _] = p.parse(f"AA:BB:CC:DD:EE:FF,{values},48.1,11.5,520.0\r\n".encode())
    assert a.phone_time_s is None and a.values == (0.212, 9.701, 0.551)
    nmea = "$GPGGA,112525.50,4020.17,N,11637.64,E,4,17,0.9,57.4,M,-8.4,M,00,0149*47"
    assert len(p.parse(f"1712345678901,{values},48.1,11.5,520.0,{nmea}\r\n".encode())) == 2
    hashed = make_parser("hyperimu:acc,gyro;terminator=#")
    assert len(hashed.parse(f"{values}#{values}#".encode())) == 4  # two records in one datagram


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"0.212,9.701,0.551,0.003,-0.010\r\n", "unexplained field count"),
        (b"0.212,9.701,0.551,0.003,-0.010,0.001,1,2\r\n", "unexplained field count"),
        (b"0.212,9.701,AA:BB:CC:DD:EE:FF,0.003,-0.010,0.001,1\r\n", "bad number"),
        (b"0.212,9.701,0.551,0.003,-0.010,NaN\r\n", "non-finite or out-of-range value"),
        (b"\r\n\r\n", "no sensor data"),
        (b"0.212,9.701,0.551,0.003,-0.010,0.001#", "bad number"),  # wrong terminator
    ],
)
def test_hyperimu_rejects(datagram, reason):
    assert rejects(make_parser("hyperimu:acc,gyro"), datagram) == reason


def test_hyperimu_config_errors():
    for spec in ("hyperimu", "hyperimu:", "hyperimu:acc,bogus", "hyperimu:acc;gps=1", "hyperimu:acc;colour=red"):
        with pytest.raises(ValueError):
            make_parser(spec)
    assert make_parser("hyperimu:acc,skip,gyro").parse(b"1,2,3,4,5,6,7,8,9\r\n")[1].values == (7.0, 8.0, 9.0)


# ----------------------------------------------------------------------------- Sensors2OSC


def test_sensors2osc_messages_case_insensitive_and_overrides():
    p = Sensors2OscParser()
    [r] = p.parse(osc("/Accelerometer", 0.1, 9.8, 0.2))
    assert r.kind == "accel" and close(r.values, (0.1, 9.8, 0.2)) and r.phone_time_s is None
    assert p.parse(osc("/gameRotationVector", 0.1, 0.2, 0.3, 0.927))[0].kind == "game_rotation_vector"
    assert p.parse(osc("/sensors2osc/magnetic_field", 20.0, -5.0, 40.0))[0].kind == "mag"
    assert p.parse(osc("/light", 300.0)) == []
    custom = make_parser("sensors2osc:/acc=accel,/gyr=gyro,/accelerometer=skip")
    assert custom.parse(osc("/GYR", 1.0, 2.0, 3.0))[0].kind == "gyro"
    assert custom.parse(osc("/accelerometer", 1.0, 2.0, 3.0)) == []
    assert p.parse(osc("/gyroscope", 1, 2, 3, tag="i"))[0].values == (1.0, 2.0, 3.0)


def test_sensors2osc_bundles_including_nested():
    inner = OscBundleBuilder(IMMEDIATELY)
    inner.add_content(OscMessageBuilder("/gyroscope").build())
    msg = OscMessageBuilder("/accelerometer")
    for v in (0.0, 9.8, 0.0):
        msg.add_arg(v, "f")
    gyro = OscMessageBuilder("/gyroscope")
    for v in (0.1, 0.2, 0.3):
        gyro.add_arg(v, "f")
    outer = OscBundleBuilder(IMMEDIATELY)
    outer.add_content(msg.build())
    inner = OscBundleBuilder(IMMEDIATELY)
    inner.add_content(gyro.build())
    outer.add_content(inner.build())
    kinds = [r.kind for r in Sensors2OscParser().parse(outer.build().dgram)]
    assert kinds == ["accel", "gyro"]


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (osc("/accelerometer", 1.0, 2.0), "wrong value count"),
        (osc("/accelerometer", math.nan, 2.0, 3.0), "non-finite or out-of-range value"),
        (osc("/accelerometer", 1.0, 2.0, 3.0)[:-4], "osc argument size mismatch"),
        (osc("/accelerometer", 1.0, 2.0, 3.0)[:-1], "osc packet not 4-byte aligned"),
        (b"/acc\0\0\0\0,fs\0" + struct.pack(">f", 1.0) + b"ab\0\0", "unsupported osc type tag"),
        (b"/acc\0\0\0\0", "osc message without type tags"),
        (b"/acc", "bad osc string"),
        (b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 400) + b"\0" * 4, "bad osc bundle element size"),
        (b"/\xff\xff\0,\0\0\0", "bad osc string"),
    ],
)
def test_sensors2osc_rejects(datagram, reason):
    assert rejects(Sensors2OscParser(), datagram) == reason


# ----------------------------------------------------------------------------- auto + specs


@pytest.mark.parametrize(
    "datagram, detected",
    [
        (SENSAGRAM_GYRO, "sensagram"),
        (SENSORSTREAM, "sensorstream"),
        (osc("/gyroscope", 0.1, 0.2, 0.3), "sensors2osc"),
        (b"#bundle\0" + struct.pack(">Qi", 1, 36) + osc("/accelerometer", 0.0, 9.8, 0.0), "sensors2osc"),
    ],
)
def test_auto_detects_and_locks(datagram, detected):
    auto = AutoDetect()
    assert auto.name == "auto" and auto.detected is None
    assert auto.parse(datagram)
    assert auto.detected == detected and auto.name == detected and detected in auto.status
    with pytest.raises(MalformedPacket):  # locked: another format is now malformed
        auto.parse(b"garbage")


def test_auto_waits_through_garbage_and_explains_hyperimu():
    auto = AutoDetect()
    for junk in (b"\xff\x00", b"{not json", b"hello"):
        rejects(auto, junk)
    assert auto.detected is None
    assert rejects(auto, HYPERIMU) == HYPERIMU_NEEDS_ORDER
    assert "hyperimu:<order>" in auto.status and auto.detected is None
    assert auto.parse(SENSORSTREAM) and auto.detected == "sensorstream"


def test_make_parser_rejects_unknown_specs():
    for spec in ("nope", "sensagram:x", "sensorstream:new", "sensors2osc:acc", "sensors2osc:/a=bogus"):
        with pytest.raises(ValueError):
            make_parser(spec)


# ----------------------------------------------------------------------------- round trips

CAL = load_calibration()
SAMPLE = phone_sample(
    12.5, (0.9659258, 0.0, 0.2588190, 0.0), (0.3, -0.2, 0.1), CAL.phone_to_torso
)  # torso pitched 30 deg forward


@pytest.mark.parametrize("spec", sorted(ENCODERS))
def test_round_trip_every_encoder(spec):
    parser = make_parser(spec)
    readings = [r for datagram in ENCODERS[spec](SAMPLE) for r in parser.parse(datagram)]
    by_kind = {r.kind: r for r in readings}
    tol = 1e-3 if spec == "sensorstream" else 1e-5  # 3 decimals in the app's format
    assert close(by_kind["accel"].values, SAMPLE.accel_m_s2, tol)
    assert close(by_kind["gyro"].values, SAMPLE.gyro_rad_s, tol)
    timed = spec in ("sensagram", "sensorstream", "hyperimu:acc,gyro")
    assert by_kind["accel"].phone_time_s == (pytest.approx(12.5, abs=1e-5) if timed else None)
    if "rotation_vector" in by_kind:
        assert close(by_kind["rotation_vector"].values[:3], SAMPLE.rotation_vector_xyzw[:3], tol)


def test_round_trip_variants():
    x, y, z, w = SAMPLE.rotation_vector_xyzw
    [*_, q] = SensorstreamParser().parse(encode_sensorstream(SAMPLE, quaternion_id=True)[0])
    assert q.kind == "quaternion" and close(q.values, (w, x, y, z), 1e-3)
    [bundle] = encode_sensors2osc(SAMPLE, bundle=True)
    assert [r.kind for r in Sensors2OscParser().parse(bundle)] == ["accel", "gyro", "rotation_vector"]
    hyper = HyperImuParser(["acc", "gyro"], terminator="#")
    datagram = encode_hyperimu(SAMPLE, mac="AA:BB:CC:DD:EE:FF", gps=(48.1, 11.5, 520.0), terminator="#")[0]
    assert [r.phone_time_s for r in hyper.parse(datagram)] == [12.5, 12.5]


# ----------------------------------------------------------------------------- fuzzing

PARSER_SPECS = ("sensagram", "sensorstream", "sensorstream:legacy", "hyperimu:acc,gyro", "sensors2osc", "auto")
VALID = {
    "sensagram": [SENSAGRAM_GYRO, *ENCODERS["sensagram"](SAMPLE)],
    "sensorstream": [SENSORSTREAM, *encode_sensorstream(SAMPLE, quaternion_id=True)],
    "sensorstream:legacy": [SENSORSTREAM],
    "hyperimu:acc,gyro": [HYPERIMU, *encode_hyperimu(SAMPLE, mac="AA:BB:CC:DD:EE:FF", gps=(1.0, 2.0, 3.0))],
    "sensors2osc": [*encode_sensors2osc(SAMPLE), *encode_sensors2osc(SAMPLE, bundle=True)],
}
VALID["auto"] = [d for v in VALID.values() for d in v]


def check_contract(spec: str, datagram: bytes) -> None:
    """Only MalformedPacket, or readings that satisfy the SensorReading contract."""
    try:
        readings = make_parser(spec).parse(datagram)
    except MalformedPacket as exc:
        assert exc.reason and len(exc.reason) < 80
        return
    assert isinstance(readings, list)
    for r in readings:
        assert isinstance(r, SensorReading)
        assert all(isinstance(v, float) and math.isfinite(v) for v in r.values)
        assert r.phone_time_s is None or math.isfinite(r.phone_time_s)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(spec=st.sampled_from(PARSER_SPECS), datagram=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(spec, datagram):
    check_contract(spec, datagram)


@st.composite
def mutated(draw):
    """A valid packet of some format with a structured mutation applied."""
    spec = draw(st.sampled_from(PARSER_SPECS))
    data = bytearray(draw(st.sampled_from(VALID[spec])))
    mutation = draw(st.sampled_from(["number", "cut", "splice", "byte", "repeat", "osc_float", "utf8"]))
    if mutation == "number":
        text = data.decode("utf-8", "replace")
        token = draw(st.sampled_from(["NaN", "inf", "-Infinity", "1e999", "99", "85", "86", "", "x", "3", "1,2"]))
        position = draw(st.integers(0, len(text)))
        data = bytearray((text[:position] + token + text[position:]).encode())
    elif mutation == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif mutation == "splice":
        other = draw(st.sampled_from(VALID[spec]))
        data = data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))) :]
    elif mutation == "byte":
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    elif mutation == "repeat":
        data = data * draw(st.integers(2, 200))  # up to giant
    elif mutation == "osc_float" and len(data) >= 4:
        position = draw(st.integers(0, len(data) // 4 - 1)) * 4
        data[position : position + 4] = struct.pack(">f", draw(st.sampled_from([math.nan, math.inf, -math.inf, 3e38])))
    elif mutation == "utf8":
        data[draw(st.integers(0, len(data))) : 0] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\0"]))
    return spec, bytes(data)


@FUZZ
@given(case=mutated())
def test_fuzz_structured_mutations(case):
    check_contract(*case)


@FUZZ
@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30), st.text(max_size=3),
                  st.booleans(), st.none()),
        max_size=6,
    ),
    timestamp=st.one_of(st.integers(-(10**400), 10**400), st.floats(), st.none(), st.text(max_size=2)),
    sensor_type=st.sampled_from(["android.sensor.accelerometer", "android.sensor.rotation_vector", "x", 5]),
)
def test_fuzz_sensagram_json_fields(values, timestamp, sensor_type):
    obj = {"timestamp": timestamp, "values": values, "type": sensor_type}
    check_contract("sensagram", json.dumps(obj).encode())


def test_simulated_sensagram_sends_float32_values_as_android_does():
    """``SensorEvent.values`` is a ``float[]``: the simulated app writes float32's shortest
    decimal, so the daemon (and its log) gets 7-9 digits, not float64 noise digits."""
    import numpy as np

    from sim.phone_stream import encode_sensagram

    sample = phone_sample(1.2345678901, (0.9, 0.1, -0.3, 0.2), (0.123456789012, -1.0 / 3.0, 2.0 / 7.0), np.eye(3))
    for datagram in encode_sensagram(sample):
        for value in json.loads(datagram)["values"]:
            assert repr(value) == str(np.float32(value)) and len(repr(value)) <= 12
    readings = SensaGramParser().parse(encode_sensagram(sample)[0])
    assert readings[0].phone_time_s == 1.234567890  # ns / 1e9, correctly rounded
