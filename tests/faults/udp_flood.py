"""Send valid SensaGram datagrams (accelerometer, gyroscope, rotation vector) as fast as asked.

Run as its own process so the sender neither shares the GIL with the board emulator nor
with the test's bookkeeping; bounded both in count and in time:

    python tests/faults/udp_flood.py --target 127.0.0.1:PORT --rate 20000 --seconds 2 [--source 127.0.0.2]
        [--pitch-deg 0] [--sway-deg 8.6]

The torso sways in pitch (amplitude ``--sway-deg`` at 0.5 Hz around ``--pitch-deg``); the
phone timestamp of every datagram is the send time, so the receiver's newest sample is
always the newest sent. Datagrams are formatted from precomputed rotation tables (a
scipy rotation per packet would cap the rate far below 20k/s). Prints one JSON line:
``{"sent": N, "start": t0, "end": t1, "errors": E}`` (monotonic seconds, system-wide clock).
Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import socket
import sys
import time

TABLE = 1000  # sway phases per period

def _tables(pitch_deg: float, sway_deg: float) -> list[tuple[bytes, bytes, bytes]]:
    from calibration import load_calibration
    from sim.phone_stream import phone_sample

    mount = load_calibration().phone_to_torso
    out = []
    for i in range(TABLE):
        phase = 2 * math.pi * i / TABLE
        pitch = math.radians(pitch_deg) + math.radians(sway_deg) * math.sin(phase)
        rate = math.radians(sway_deg) * math.pi * math.cos(phase)  # d/dt at 0.5 Hz
        s = phone_sample(0.0, (math.cos(pitch / 2), 0.0, math.sin(pitch / 2), 0.0), (0.0, rate, 0.0), mount)
        a = ",".join(f"{v:.6f}" for v in s.accel_m_s2)
        g = ",".join(f"{v:.6f}" for v in s.gyro_rad_s)
        r = ",".join(f"{v:.6f}" for v in s.rotation_vector_xyzw) + ",0.1"
        out.append((
            ('{"type":"android.sensor.accelerometer","timestamp":%d,"values":[' + a + "]}").encode(),
            ('{"type":"android.sensor.gyroscope","timestamp":%d,"values":[' + g + "]}").encode(),
            ('{"type":"android.sensor.rotation_vector","timestamp":%d,"values":[' + r + "]}").encode(),
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT on loopback")
    p.add_argument("--source", default="127.0.0.1", help="loopback address to send from")
    p.add_argument("--rate", type=float, default=20000.0, help="datagrams per second")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--max-count", type=int, default=1_000_000)
    p.add_argument("--pitch-deg", type=float, default=0.0)
    p.add_argument("--sway-deg", type=float, default=8.6)
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    for addr in (host, args.source):
        if not ipaddress.ip_address(addr).is_loopback:
            raise SystemExit(f"refusing non-loopback address {addr}")
    tables = _tables(args.pitch_deg, args.sway_deg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.source, 0))
    target = (host, int(port))
    period = 1.0 / args.rate
    batch = max(1, int(args.rate / 1000))  # datagrams per 1 ms slot: pacing without a sleep per packet
    sent = errors = 0
    start = time.monotonic()
    end = start + args.seconds
    clock0_ns = time.monotonic_ns()
    while sent < args.max_count:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) / period) + 1
        if sent >= due:
            time.sleep(min(0.001, sent * period - (now - start)) if sent * period > now - start else 0)
            continue
        for _ in range(min(batch, due - sent, args.max_count - sent)):
            t_ns = time.monotonic_ns() - clock0_ns
            row = tables[(t_ns // 2_000_000) % TABLE]  # 2 s sway period
            try:
                sock.sendto(row[sent % 3] % t_ns, target)
            except OSError:
                errors += 1
            sent += 1
    print(json.dumps({"sent": sent, "start": start, "end": time.monotonic(), "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
