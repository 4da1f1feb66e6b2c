"""PhoneReceiver over real UDP loopback sockets: formats, senders, ordering, bounds, cost."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Callable

import numpy as np
import pytest

from calibration import load_calibration
from robotd.phone.fusion import Fusion
from robotd.phone.clock import ClockOffset
from robotd.phone.formats import make_parser
from robotd.phone.receiver import PhoneReceiver, parse_allow
from sim.observation import gravity_in_torso
from sim.phone_stream import ENCODERS, PhoneSample, PhoneStreamer, encode_sensorstream, phone_sample

CAL = load_calibration()
TILTED = np.array([0.9659258, 0.0, 0.2588190, 0.0])  # torso pitched 30 degrees forward


def sample_at(t: float, rotation_vector: bool = True) -> PhoneSample:
    return phone_sample(t, TILTED, (0.0, 0.0, 0.0), CAL.phone_to_torso, rotation_vector=rotation_vector)


def receiver(spec: str = "auto", **kwargs) -> PhoneReceiver:
    return PhoneReceiver(make_parser(spec), Fusion(CAL), host="127.0.0.1", port=0, **kwargs)


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for packets"
        await asyncio.sleep(0.002)


async def settle() -> None:
    """Let the receive task drain the socket (loopback delivery is immediate)."""
    for _ in range(5):
        await asyncio.sleep(0.01)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=15))


@pytest.mark.parametrize("spec", sorted(ENCODERS))
def test_each_format_end_to_end_over_udp(spec):
    async def main():
        async with receiver(spec) as rx:
            with PhoneStreamer((rx.host, rx.port), spec, source_host="127.0.0.1") as phone:
                for i in range(300):
                    phone.send(sample_at(i * 0.01, rotation_vector=spec != "hyperimu:acc,gyro"))
                    if i % 10 == 0:  # let the receiver catch up: a burst would overflow the socket buffer
                        await until(lambda: rx.counters.accepted == phone.sent_datagrams)
                await until(lambda: rx.counters.accepted == phone.sent_datagrams)
            snap = rx.snapshot
            assert snap.format == spec and snap.seq == phone.sent_datagrams
            np.testing.assert_allclose(gravity_in_torso(snap.quat_wxyz), gravity_in_torso(TILTED), atol=0.01)
            np.testing.assert_allclose(snap.gyro_torso_rad_s, 0.0, atol=1e-3)
            assert snap.parse_us > 0 and snap.fuse_us > 0
            timed = spec != "sensors2osc"
            assert (snap.phone_time_s is not None) == timed and (snap.age_at_arrival_ms is not None) == timed
            drained = rx.drain_readings()
            assert len(drained) >= 600 and rx.drain_readings() == []
            arrival, phone_t, kind, values = drained[0]
            assert kind == "accel" and len(values) == 3 and arrival <= drained[-1][0]
            assert rx.counters.rejected == rx.counters.foreign_sender == rx.counters.stale == 0

    run(main())


@pytest.mark.parametrize("spec", ["sensagram", "sensorstream", "sensors2osc"])
def test_auto_detection_reported_in_snapshot_and_health(spec):
    async def main():
        async with receiver("auto") as rx:
            assert "waiting" in rx.health(time.monotonic())
            with PhoneStreamer((rx.host, rx.port), spec) as phone:
                phone.send(sample_at(1.0))
                await until(lambda: rx.snapshot is not None)
            assert rx.snapshot.format == spec and rx.parser.detected == spec
            assert f"fmt={spec}" in rx.health(time.monotonic())

    run(main())


def test_auto_tells_hyperimu_users_what_to_do():
    async def main():
        async with receiver("auto") as rx:
            with PhoneStreamer((rx.host, rx.port), "hyperimu:acc,gyro") as phone:
                phone.send(sample_at(1.0))
                await until(lambda: rx.counters.rejected == 1)
            assert rx.snapshot is None and "hyperimu:<order>" in rx.health(time.monotonic())

    run(main())


def test_allow_list_counts_foreign_senders():
    async def main():
        async with receiver("sensorstream", allow=parse_allow("127.0.0.1")) as rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.2") as stranger:
                for i in range(5):
                    stranger.send(sample_at(i * 0.01))
                await until(lambda: rx.counters.foreign_sender == 5)
            assert rx.snapshot is None and rx.counters.bytes == 0
            with PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.1") as phone:
                phone.send(sample_at(1.0))
                await until(lambda: rx.snapshot is not None)
            assert "foreign=5" in rx.health(time.monotonic())

    run(main())


def test_allow_first_locks_to_first_valid_sender():
    async def main():
        async with receiver("sensorstream", allow=parse_allow("first")) as rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.1") as noise, PhoneStreamer(
                (rx.host, rx.port), "sensorstream", source_host="127.0.0.2"
            ) as phone:
                noise.send_raw(b"not a phone")  # garbage does not lock
                await until(lambda: rx.counters.rejected == 1)
                phone.send(sample_at(1.0))
                await until(lambda: rx.locked_sender == "127.0.0.2")
                noise.send(sample_at(2.0))
                await until(lambda: rx.counters.foreign_sender == 1)
            assert rx.counters.accepted == 1

    run(main())


def test_parse_allow():
    # No --allow locks onto the first sender; letting anyone steer the IMU is an explicit opt-in.
    assert parse_allow(None) == "first" and parse_allow("") == "first" and parse_allow("FIRST") == "first"
    assert parse_allow("any") is None and parse_allow(" ANY ") is None
    assert parse_allow("192.168.1.20, 192.168.1.21") == {"192.168.1.20", "192.168.1.21"}


def test_default_policy_locks_to_the_first_sender_and_names_it():
    events: list[tuple[str, dict]] = []

    async def main():
        async with receiver("sensorstream", allow=parse_allow(None),
                            on_event=lambda name, **d: events.append((name, d))) as rx:
            assert "from=first-sender" in rx.health(time.monotonic())
            with PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.2") as phone, \
                    PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.1") as other:
                phone.send(sample_at(1.0))
                await until(lambda: rx.snapshot is not None)
                other.send(sample_at(2.0))
                await until(lambda: rx.counters.foreign_sender == 1)
            assert rx.counters.accepted == 1
            assert "from=127.0.0.2(locked)" in rx.health(time.monotonic())
        assert events == [("sender_locked", {"sender": "127.0.0.2"})]

    run(main())


class _BrokenFusion(Fusion):
    """Fails on every n-th update, as a bug in the fusion library would."""

    def __init__(self, every: int):
        super().__init__(CAL)
        self.every = every
        self.calls = 0

    def update(self, readings, arrival_t):
        self.calls += 1
        if self.calls % self.every == 0:
            raise FloatingPointError("fusion blew up")
        return super().update(readings, arrival_t)


def test_a_fusion_failure_costs_one_packet_is_counted_and_said():
    events: list[tuple[str, dict]] = []

    async def main():
        rx = PhoneReceiver(make_parser("sensorstream"), _BrokenFusion(every=3), host="127.0.0.1", port=0,
                           on_event=lambda name, **d: events.append((name, d)))
        async with rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.1") as phone:
                for i in range(9):
                    phone.send(sample_at(i * 0.01))
                    await until(lambda: rx.counters.accepted + rx.counters.internal_errors == i + 1)
            assert rx.counters.internal_errors == 3 and rx.counters.accepted == 6  # still receiving
            assert "errors=3" in rx.health(time.monotonic())
        assert [name for name, _ in events] == ["receiver_error"] * 3
        assert events[0][1]["where"] == "fusion" and "fusion blew up" in events[0][1]["error"]

    run(main())


def test_a_receive_task_that_dies_says_so():
    """A failure of the socket layer itself ends the task: that is an event, never silence."""
    events: list[tuple[str, dict]] = []

    async def main():
        rx = receiver("sensorstream", on_event=lambda name, **d: events.append((name, d)))
        async with rx:
            async def broken_recv():
                raise RuntimeError("socket layer gone")

            rx._stream.recv = broken_recv  # type: ignore[union-attr,method-assign]
            with PhoneStreamer((rx.host, rx.port), "sensorstream", source_host="127.0.0.1") as phone:
                phone.send(sample_at(0.0))  # wakes the pending recv; the next one fails
                await until(lambda: bool(events))
        assert events[0][0] == "receiver_stopped" and "socket layer gone" in events[0][1]["error"]
        assert len(events) == 1  # stop() afterwards is not a second report

    run(main())


def test_reordered_and_duplicate_packets_do_not_replace_newest():
    async def main():
        async with receiver("sensorstream") as rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream") as phone:
                for t in (1.0, 2.0, 2.0, 1.5, 3.0, 2.5):
                    phone.send(sample_at(t))
                await until(lambda: rx.counters.accepted + rx.counters.stale == 6)
            assert (rx.counters.accepted, rx.counters.duplicate, rx.counters.reordered) == (3, 1, 2)
            assert rx.snapshot.phone_time_s == 3.0 and rx.snapshot.seq == 3
            assert [row[1] for row in rx.drain_readings()][::3] == [1.0, 2.0, 3.0]

    run(main())


def test_malformed_packets_are_counted_and_receiving_goes_on():
    junk = [b"", b"\xff" * 10, b"1.0, 3, nan, 0, 0", b"1.0, 99, 1, 2, 3", b"x" * 5000, b"1.0, 3, 1, 2"]

    async def main():
        async with receiver("sensorstream") as rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream") as phone:
                for datagram in junk:
                    phone.send_raw(datagram)
                phone.send(sample_at(1.0))
                await until(lambda: rx.snapshot is not None)
            malformed = rx.counters.malformed
            assert sum(malformed.values()) == len(junk)
            assert malformed["unknown sensor id"] == 1 and malformed["datagram too large"] == 1
            assert not rx._task.done()

    run(main())


def test_drained_readings_are_bounded_drop_oldest():
    async def main():
        async with receiver("sensorstream", max_readings=10) as rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream") as phone:
                for i in range(30):
                    phone.send(sample_at(i * 0.01))  # accel, gyro, rotation vector each
                await until(lambda: rx.counters.accepted == 30)
            drained = rx.drain_readings()
            assert len(drained) == 10 and rx.counters.dropped_readings == 80
            assert drained[-1][1] == pytest.approx(0.29)

    run(main())


def test_packet_age_from_clock_offset_and_clock_restart():
    rx = receiver("sensorstream")
    phone_t0 = 5000.0  # phone clock: seconds since its boot
    ages = []
    for i in range(100):
        delay_s = 0.003 + (0.050 if i == 60 else 0.0) + 0.001 * (i % 3)
        datagram = encode_sensorstream(sample_at(phone_t0 + i * 0.01))[0]
        rx.handle_datagram(datagram, "127.0.0.1", 100.0 + i * 0.01 + delay_s)
        ages.append(rx.snapshot.age_at_arrival_ms)
    assert ages[60] == pytest.approx(50.0, abs=1.5)  # the stalled packet
    assert max(ages[10:60] + ages[61:]) <= 2.0 + 1e-6  # jitter only, above the fastest packet
    assert rx.latest_age_ms(100.0 + 0.99 + 0.003 + 0.020) == pytest.approx(20.0 + ages[-1], abs=1e-6)
    rx.handle_datagram(encode_sensorstream(sample_at(3.0))[0], "127.0.0.1", 101.5)  # app restarted
    assert rx.counters.clock_resets == 1 and rx.snapshot.phone_time_s == 3.0 and rx.snapshot.age_at_arrival_ms == 0.0


def test_clock_offset_window_slides():
    clock = ClockOffset(window_s=1.0)
    assert clock.offset_s is None
    assert clock.observe(10.0, 110.005) == 0.0
    assert clock.observe(10.1, 110.100) == 0.0  # faster packet: new minimum
    assert clock.observe(10.2, 110.210) == pytest.approx(10.0)
    assert clock.offset_s == pytest.approx(100.0)
    assert clock.observe(12.0, 112.010) == 0.0  # the old minimum left the window


def test_cost_per_packet_and_no_backlog_at_1000_hz(capsys):
    """Parse+fuse cost per datagram for every format, then 1 s of 1000 Hz over loopback."""
    costs_us = {}
    for spec, encode in sorted(ENCODERS.items()):
        rx = receiver(spec)
        samples = []
        for i, datagram in enumerate(d for i in range(1000) for d in encode(sample_at(i * 0.001))):
            rx.handle_datagram(datagram, "127.0.0.1", 10.0 + i * 0.001)
            samples.append(rx.snapshot.parse_us + rx.snapshot.fuse_us)
        costs_us[spec] = statistics.median(samples[200:])

    async def main():
        async with receiver("sensorstream") as rx:
            with PhoneStreamer((rx.host, rx.port), "sensorstream", rate_hz=1000.0) as phone:
                started = time.monotonic()
                phone.start(sample_at, duration_s=1.0)
                ages = []
                while time.monotonic() - started < 1.2:
                    await asyncio.sleep(0.02)  # a 50 Hz control loop reading the snapshot
                    if rx.snapshot is not None:
                        ages.append(rx.latest_age_ms(time.monotonic()))
                phone.stop()
                await settle()
            return phone.sent_datagrams, rx.counters.accepted, ages

    sent, accepted, ages = asyncio.run(main())
    with capsys.disabled():
        print("\nphone parse+fuse median us/datagram: " + ", ".join(f"{k}={v:.1f}" for k, v in costs_us.items()))
        print(f"1000 Hz loopback: sent={sent} accepted={accepted} snapshot age median={statistics.median(ages):.2f} ms")
    assert accepted == sent >= 900
    assert max(costs_us.values()) < 500.0
    assert statistics.median(ages) < 20.0


def _sensorstream(t: float, *, accel=True, gyro=True, rotvec=True, mag=False) -> bytes:
    parts = [f"{t:.5f}"]
    if accel:
        parts.append(" 3,  0.000,  0.000,  9.810")
    if gyro:
        parts.append(" 4,  0.010,  0.000,  0.000")
    if mag:
        parts.append(" 5, 20.000,  0.000, -40.000")
    if rotvec:
        parts.append(" 84,  0.000,  0.000,  0.000")
    return ",".join(parts).encode()


@pytest.mark.parametrize("stops,still_sent", [("gyro", dict(gyro=False)),
                                              ("accel+gyro (orientation frozen)", dict(accel=False, gyro=False,
                                                                                      rotvec=False, mag=True))])
def test_a_signal_that_stops_is_stale_while_others_keep_arriving(stops, still_sent):
    """Per-signal staleness: packets keep arriving every 10 ms, but one signal the observation
    uses no longer updates; the snapshot's age is that signal's, not the newest packet's."""
    rx = receiver("sensorstream")
    t = 0.0
    for _ in range(50):  # 0.5 s of complete packets
        rx.handle_datagram(_sensorstream(t), "127.0.0.1", 100.0 + t)
        t += 0.01
    assert rx.snapshot is not None and rx.snapshot.age_ms(100.0 + t) < 20
    stopped_at = t
    for _ in range(100):  # 1 s more, with the signal gone
        rx.handle_datagram(_sensorstream(t, **still_sent), "127.0.0.1", 100.0 + t)
        t += 0.01
    snap = rx.snapshot
    now = 100.0 + t
    assert now - snap.arrival_mono_s < 0.02  # the stream itself is fresh ...
    assert snap.age_ms(now) > (t - stopped_at) * 1e3 - 20, stops  # ... the signal is a second old
    assert snap.age_ms(now) > 150  # the default stale timeout: the robot holds


def test_rotation_vector_stopping_falls_back_to_fresh_ahrs():
    """Gyro and accel still arriving: the orientation comes from the AHRS again and is fresh."""
    rx = receiver("sensorstream")
    t = 0.0
    for i in range(150):
        rx.handle_datagram(_sensorstream(t, rotvec=i < 50), "127.0.0.1", 100.0 + t)
        t += 0.01
    assert rx.snapshot.source == "ahrs" and rx.snapshot.age_ms(100.0 + t) < 20
